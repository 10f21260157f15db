//! What one request did, as its log line and its metrics name it (a leaf: the metrics
//! read it without depending on the proxy).

/// What one request did, as its log line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Served from this node's disk after a 304.
    Hit,
    /// Served from another request's fill in progress after a 304.
    Collapsed,
    /// Nothing reached the client: the conditional request (or the head) failed.
    Miss,
    /// Stored while served.
    Fill,
    /// Relayed, not stored.
    Pass,
    /// Refused before reaching an origin.
    Reject,
    /// One of chacha's own endpoints.
    Internal,
    KvGet,
    KvPut,
    KvDelete,
    /// Served from the owner node after a 304.
    PeerHit,
    /// Stored on the owner node while served.
    PeerFill,
    /// A blind CONNECT tunnel (bytes relayed, not intercepted).
    Tunnel,
    /// A validated hit answered with a 307 to its owner's `/direct-connect`.
    Redirect,
    /// `GET /direct-connect` on the owner.
    DirectConnect,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Hit => "hit",
            Op::Collapsed => "collapsed",
            Op::Miss => "miss",
            Op::Fill => "fill",
            Op::Pass => "pass",
            Op::Reject => "reject",
            Op::Internal => "internal",
            Op::KvGet => "kv-get",
            Op::KvPut => "kv-put",
            Op::KvDelete => "kv-delete",
            Op::PeerHit => "peer-hit",
            Op::PeerFill => "peer-fill",
            Op::Tunnel => "tunnel",
            Op::Redirect => "redirect",
            Op::DirectConnect => "direct-connect",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
