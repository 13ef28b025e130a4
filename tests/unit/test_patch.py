import pytest

from freezeframe.common import errors
from freezeframe.images.patch import MEDIA_V20, MEDIA_V21, Change, parse


def test_v21_and_v20_parse_to_the_same_changes():
    v21 = parse(MEDIA_V21, [{"op": "replace", "path": "/name", "value": "x"}, {"op": "remove", "path": "/a~1b"}])
    v20 = parse(MEDIA_V20, [{"replace": "/name", "value": "x"}, {"remove": "/a~1b"}])
    assert v21 == v20 == [Change("replace", "name", "x"), Change("remove", "a/b")]


def test_pointer_escapes():
    assert parse(MEDIA_V21, [{"op": "add", "path": "/a~0b", "value": "v"}])[0].path == "a~b"


@pytest.mark.parametrize("body", [
    {}, [1], [{"op": "copy", "path": "/x"}], [{"op": "add", "path": "x", "value": 1}],
    [{"op": "add", "path": "/", "value": 1}], [{"op": "add", "path": "/a/b", "value": 1}],
    [{"op": "add", "path": "/a"}], [{"op": "remove", "path": "/a", "value": 1}], [{"op": "add", "value": 1}],
    [{"op": "add", "path": "/a~2", "value": 1}],
])
def test_malformed(body):
    with pytest.raises(errors.Invalid):
        parse(MEDIA_V21, body)


def test_v20_needs_exactly_one_op():
    with pytest.raises(errors.Invalid):
        parse(MEDIA_V20, [{"add": "/a", "remove": "/b", "value": 1}])
