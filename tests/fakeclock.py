"""A clock for code that takes ``clock`` and ``sleep`` callables: sleeping moves it on at once,
and every sleep is remembered (the waits a test asserts)."""


class Clock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
