//! Peer addresses: a dialable multiaddr ending in the peer's id.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// A parsed peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerAddr {
    /// Who must answer: the Noise handshake checks it.
    pub(crate) peer: PeerId,
    /// Where to dial, without the `/p2p` part.
    pub(crate) addr: Multiaddr,
}

/// Parses `/ip4/…/tcp/…/p2p/<peer id>`.
///
/// # Errors
/// Why `text` is no such address.
pub(crate) fn parse_peer_addr(text: &str) -> Result<PeerAddr, String> {
    let mut addr: Multiaddr = text.parse().map_err(|e| format!("not a multiaddr: {e}"))?;
    match addr.pop() {
        Some(Protocol::P2p(peer)) => {
            if addr.iter().next().is_none() {
                return Err("no network address before /p2p/<peer id>".to_owned());
            }
            Ok(PeerAddr { peer, addr })
        }
        _ => Err("the address must end in /p2p/<peer id>".to_owned()),
    }
}

/// The address peers dial to reach `peer` at `addr`.
pub(crate) fn format_peer_addr(addr: &Multiaddr, peer: PeerId) -> String {
    addr.clone().with(Protocol::P2p(peer)).to_string()
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;

    #[test]
    fn round_trips() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/7001".parse().unwrap();
        let text = format_peer_addr(&addr, peer);
        assert_eq!(text, format!("/ip4/127.0.0.1/tcp/7001/p2p/{peer}"));
        assert_eq!(parse_peer_addr(&text).unwrap(), PeerAddr { peer, addr });
    }

    #[test]
    fn malformed_addresses_are_explained() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        for (text, needle) in [
            ("127.0.0.1:7001", "not a multiaddr"),
            ("", "/p2p/<peer id>"),
            ("/ip4/127.0.0.1/tcp/7001", "must end in /p2p"),
            (&format!("/p2p/{peer}"), "no network address"),
            ("/ip4/127.0.0.1/tcp/7001/p2p/notapeer", "not a multiaddr"),
        ] {
            let err = parse_peer_addr(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err} should say {needle}");
        }
    }
}
