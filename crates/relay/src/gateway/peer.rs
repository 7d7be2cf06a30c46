//! Which client a new session comes from, for the per-address budget.
//!
//! The TCP peer is read from the request's extensions, where the server
//! puts it: axum's `ConnectInfo<SocketAddr>` (`into_make_service_with_connect_info`,
//! or inserted by hand per request in an accept loop of one's own). Without
//! it the per-address budget does not apply and only the node-wide one does.
//!
//! Behind a load balancer every peer is the balancer: `X-Forwarded-For` then
//! names the client, but only a proxy the operator trusts may say so (any
//! client can send the header). Walking the header from the right, each hop
//! a trusted proxy appended is skipped; the first address that is not a
//! trusted proxy is the client.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::{extract::ConnectInfo, http::HeaderMap};

use crate::config::IpNet;

/// The client address of a request, or None when the server did not say
/// who the peer is.
pub fn client_addr(
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical())?;
    Some(forwarded_client(peer, headers, trusted))
}

fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // Several headers count as one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // Garbage in the header: the trusted proxy that appended it is
            // the last address known to be true.
            None => break,
        }
    }
    client
}

/// `1.2.3.4`, `2001:db8::1`, and the forms some proxies write with a port:
/// `1.2.3.4:5678`, `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|addr| addr.ip().to_canonical())
}

/// The key an address is budgeted under: an IPv4 address, or an IPv6 /64
/// (one subscriber's usual allocation; an address per request within it
/// costs nothing).
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(net))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{Extensions, HeaderValue};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn with_peer(peer: &str) -> Extensions {
        let mut ext = Extensions::new();
        ext.insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        ext
    }

    #[test]
    fn without_a_peer_there_is_no_address() {
        let trusted = nets(&["127.0.0.1"]);
        assert_eq!(
            client_addr(&Extensions::new(), &headers(&["1.2.3.4"]), &trusted),
            None
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let got = client_addr(
            &with_peer("203.0.113.9:4000"),
            &headers(&["1.2.3.4"]),
            &nets(&["127.0.0.1"]),
        );
        assert_eq!(got, Some(ip("203.0.113.9")));
        // No trusted proxies configured: the header means nothing.
        let got = client_addr(&with_peer("127.0.0.1:4000"), &headers(&["1.2.3.4"]), &[]);
        assert_eq!(got, Some(ip("127.0.0.1")));
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = with_peer("127.0.0.1:4000");
        // The client prepended a lie; the proxies appended the truth.
        let got = client_addr(
            &peer,
            &headers(&["6.6.6.6, 198.51.100.7, 10.1.2.3"]),
            &trusted,
        );
        assert_eq!(got, Some(ip("198.51.100.7")));
        // Split over several headers, with ports.
        let got = client_addr(
            &peer,
            &headers(&["6.6.6.6", "[2001:db8::5]:443, 10.1.2.3:80"]),
            &trusted,
        );
        assert_eq!(got, Some(ip("2001:db8::5")));
        // Every hop trusted: the left-most one.
        let got = client_addr(&peer, &headers(&["10.0.0.1, 10.0.0.2"]), &trusted);
        assert_eq!(got, Some(ip("10.0.0.1")));
        // Garbage: the last trusted hop before it.
        let got = client_addr(&peer, &headers(&["1.1.1.1, junk, 10.0.0.2"]), &trusted);
        assert_eq!(got, Some(ip("10.0.0.2")));
        // No header: the proxy itself.
        let got = client_addr(&peer, &HeaderMap::new(), &trusted);
        assert_eq!(got, Some(ip("127.0.0.1")));
        // A v4-mapped peer on a dual-stack listener is its v4 address.
        let got = client_addr(
            &with_peer("[::ffff:127.0.0.1]:4000"),
            &headers(&["198.51.100.7"]),
            &trusted,
        );
        assert_eq!(got, Some(ip("198.51.100.7")));
    }

    #[test]
    fn ipv6_clients_are_budgeted_per_64() {
        assert_eq!(
            budget_key(ip("2001:db8:1:2:aaaa::1")),
            budget_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            budget_key(ip("2001:db8:1:2::1")),
            budget_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(budget_key(ip("1.2.3.4")), ip("1.2.3.4"));
    }
}
