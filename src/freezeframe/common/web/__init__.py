"""HTTP pieces every service API shares: request parsing, strict bodies, microversions, the error map."""
