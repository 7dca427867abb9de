//! Pure statistics: RFC 3550 jitter, loss accounting of probes in flight,
//! windowed minimum.
