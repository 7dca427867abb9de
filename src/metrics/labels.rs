//! Closed label-value enums of the agent's metrics. Every label value an
//! agent exports comes from one of these (or from [`crate::peer`]'s
//! `AgentKind` and `PathKind`), so cardinality is bounded by construction.

use crate::label_enum::label_enum;

label_enum! {
    /// The `protocol` label: which probe produced a latency sample.
    Protocol {
        /// UDP request/response echo.
        Udp => "udp",
        /// TCP request/response echo on a persistent connection.
        Tcp => "tcp",
        /// ICMP echo.
        Icmp => "icmp",
        /// HTTP GET on a fresh connection.
        Http => "http",
    }
}

label_enum! {
    /// The `phase` label of HTTP probe durations. The TCP connect of the
    /// request is in `total`; alone it is what `kubepulse_tcp_connect_duration_seconds`
    /// measures, so it has no phase of its own (one histogram fewer per path).
    HttpPhase {
        /// Request sent to first response byte.
        FirstByte => "first_byte",
        /// First byte to last byte of the body.
        Transfer => "transfer",
        /// Connect to last byte: the whole request, as ab times it.
        Total => "total",
    }
}

label_enum! {
    /// The `direction` label of bandwidth bursts, seen from the prober.
    Direction {
        /// The prober sends, the peer's responder sinks.
        Send => "send",
        /// The peer's responder sends, the prober receives.
        Receive => "receive",
    }
}

label_enum! {
    /// The `outcome` label of bandwidth bursts.
    BurstOutcome {
        /// The burst completed and a goodput was recorded.
        Ok => "ok",
        /// The responder refused: another burst was running.
        Busy => "busy",
        /// Connect, protocol or IO failure.
        Error => "error",
    }
}

label_enum! {
    /// The `reason` label of probe errors that are not losses.
    ProbeErrorReason {
        /// The local send failed (no route, buffer full, ...).
        SendFailed => "send_failed",
        /// A TCP connection could not be established.
        ConnectFailed => "connect_failed",
        /// A reply did not parse or did not match a probe in flight.
        BadReply => "bad_reply",
        /// A reply arrived after its probe was already counted as lost.
        LateReply => "late_reply",
        /// A reply was timed across a wall-clock step and dropped.
        ClockStep => "clock_step",
    }
}

label_enum! {
    /// The `responder` label: which probe responder.
    ResponderKind {
        /// UDP echo.
        UdpEcho => "udp_echo",
        /// TCP request/response echo.
        TcpEcho => "tcp_echo",
        /// TCP bandwidth sink/source.
        Bandwidth => "bandwidth",
        /// HTTP fixed-size body.
        Http => "http",
    }
}

label_enum! {
    /// The `reason` label of requests a responder rejected.
    RejectReason {
        /// Did not parse (bad magic, short, unknown command).
        Malformed => "malformed",
        /// Larger than the responder accepts.
        Oversized => "oversized",
        /// A bandwidth burst was already running.
        Busy => "busy",
        /// The connection limit was reached.
        ConnectionLimit => "connection_limit",
        /// The request asked for more bytes or time than allowed.
        OverLimit => "over_limit",
        /// A bandwidth request with a bad MAC, a timestamp outside ±30 s or
        /// a replayed nonce.
        Unauthenticated => "unauthenticated",
        /// The source sent more echo requests or opened more connections
        /// per second than its budget allows.
        SourceRate => "source_rate",
        /// The source already holds its share of open connections.
        SourceConnections => "source_connections",
        /// The source used up its bandwidth bytes per minute.
        SourceBytes => "source_bytes",
    }
}

label_enum! {
    /// The `reason` label of probe outcomes kept out of the statistics.
    ExcludeReason {
        /// A kubepulse bandwidth burst involved this agent's or the peer's
        /// node while the probe was in flight (plus a drain margin).
        BandwidthBurst => "bandwidth_burst",
    }
}

label_enum! {
    /// The `mode` label of `kubepulse_icmp_socket_info`.
    IcmpMode {
        /// Unprivileged datagram ICMP socket (ping_group_range).
        Dgram => "dgram",
        /// Raw socket (CAP_NET_RAW).
        Raw => "raw",
        /// Neither could be opened: ICMP probes are off.
        Unavailable => "unavailable",
    }
}

label_enum! {
    /// The `outcome` label of cluster DNS lookups: the reply's rcode, or
    /// why there was no usable reply.
    DnsOutcome {
        /// NOERROR with at least one answer record.
        Ok => "ok",
        /// NOERROR without an answer of the asked type (NODATA).
        NoData => "nodata",
        /// NXDOMAIN: the name does not exist.
        Nxdomain => "nxdomain",
        /// SERVFAIL: the server could not answer (upstream or backend failure).
        Servfail => "servfail",
        /// REFUSED: the server declined to answer.
        Refused => "refused",
        /// Any other rcode (FORMERR, NOTIMP, ...).
        OtherRcode => "other_rcode",
        /// No reply within the timeout.
        Timeout => "timeout",
        /// The query could not be sent (no route, ICMP unreachable seen
        /// as a connection refusal on the connected socket, ...).
        SendFailed => "send_failed",
        /// A reply that did not parse or did not answer the question.
        BadReply => "bad_reply",
    }
}

label_enum! {
    /// The `target` label of apiserver reachability probes: how the
    /// apiserver was addressed.
    ApiserverTarget {
        /// The `kubernetes` Service ClusterIP (through kube-proxy or its
        /// replacement on this node).
        Service => "service",
        /// An apiserver endpoint address directly (from the
        /// `default/kubernetes` EndpointSlice).
        Direct => "direct",
    }
}

label_enum! {
    /// The `phase` label of apiserver reachability probe durations.
    ApiserverPhase {
        /// TCP connect (SYN to SYN/ACK).
        Connect => "connect",
        /// TLS handshake, from ClientHello to the handshake's end.
        TlsHandshake => "tls_handshake",
        /// `GET /livez` written to the last byte of its response.
        Livez => "livez",
    }
}

label_enum! {
    /// The `outcome` label of apiserver reachability probes: the first
    /// phase that failed, or `ok`.
    ApiserverOutcome {
        /// Connected, handshook and `/livez` answered 200.
        Ok => "ok",
        /// The TCP connection was refused or had no route.
        ConnectFailed => "connect_failed",
        /// A phase did not finish within the timeout.
        Timeout => "timeout",
        /// The TLS handshake failed (certificate, protocol).
        TlsFailed => "tls_failed",
        /// `/livez` answered something other than 200, or not HTTP.
        HttpFailed => "http_failed",
    }
}
