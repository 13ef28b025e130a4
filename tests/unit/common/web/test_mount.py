"""Public paths come from what is mounted: each service says which of its paths need no token."""

from freezeframe.common.web.mount import Mounted, Public, PublicPaths


def test_public_paths_are_what_the_mounted_services_declare():
    public = PublicPaths([Mounted("image", "/image", None, public=(Public(""), Public("/versions"))),
                          Mounted("identity", "/identity", None,
                                  public=(Public("/v3/auth/tokens", frozenset({"POST"})),)),
                          Mounted("workflows", "/v1", None)], own=(Public(""),))
    assert public("/image") and public("/image/") and public("/image/versions", "DELETE")
    assert public("/identity/v3/auth/tokens", "POST")
    assert not public("/identity/v3/auth/tokens", "GET")        # validating a token needs one
    assert not public("/image/v2/images") and not public("/v1") and not public("/v1/workflows")
    assert public("/") and not public("/image/versions/x")
    assert public("/healthcheck") and not public("/healthcheck", detailed=True)
