import pytest

from freezeframe.agent import config


def test_cmdline_and_cli_override(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        "BOOT_IMAGE=/vmlinuz quiet ipa-api-url=http://10.0.2.2:8080/baremetal/ ipa-node-uuid=abc "
        "ipa-advertise-host=10.0.2.15 ipa-advertise-port=9000 ipa-listen-port=9100 ipa-insecure=1\n"
    )
    cfg = config.load(["--cmdline", str(cmdline)])
    assert cfg.api_url == "http://10.0.2.2:8080/baremetal"
    assert cfg.node_uuid == "abc"
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 9100)
    assert (cfg.advertise_host, cfg.advertise_port) == ("10.0.2.15", 9000)
    assert cfg.insecure is True
    cfg = config.load(
        ["--cmdline", str(cmdline), "--api-url", "http://h:1/bm", "--node-uuid", "xyz", "--listen", "127.0.0.1:0",
         "--disk", "/tmp/d.img,name=/dev/sda,model=Fake Disk,size=10G,rotational=no", "--heartbeat-timeout", "2"]
    )
    assert cfg.api_url == "http://h:1/bm" and cfg.node_uuid == "xyz"
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 0)
    assert cfg.heartbeat_timeout == 2.0
    (disk,) = cfg.disks
    assert disk == config.DiskSpec(path="/tmp/d.img", name="/dev/sda", model="Fake Disk", size=10 * 1024**3, rotational=False)


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no API URL anywhere
        ["--api-url", "http://x", "--disk", "/d,colour=red"],
        ["--api-url", "http://x", "--disk", ",name=a"],
        ["--api-url", "http://x", "--listen", "nohostport"],
        ["--agent-token", "short"],
    ],
)
def test_bad_flags(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        config.load(["--cmdline", str(tmp_path / "none"), *argv])
    assert exc.value.code == 2
