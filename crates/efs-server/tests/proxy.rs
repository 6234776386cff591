//! The PROXY protocol from trusted proxies (`--proxy-protocol-from`): a load balancer
//! forwarding TCP names each client in a header before the TLS handshake, and the server
//! uses that address for the per-address limits and the audit log. Here the "balancer" is the
//! test (and curl's `--haproxy-protocol`) connecting from 127.0.0.2, a loopback address of
//! its own; the test's other requests come from 127.0.0.1, a direct client.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The proxy's address (any 127/8 address is loopback on Linux).
const PROXY: &str = "127.0.0.2";

/// A TCP connection to `srv` from `from`, which first sends `header`.
async fn connect_from(srv: &TestServer, from: &str, header: &[u8]) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(srv.addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    tcp
}

/// TLS over `tcp`, to `srv`.
async fn tls_over(
    srv: &TestServer,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(rustls_client_config(&srv.cert_pem)));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(15), connector.connect(name, tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the handshake hung")))
}

/// A GET of a file without a token through the "proxy" with `header`: its status (401 once
/// served), or the error that ended the connection.
async fn get_through(srv: &TestServer, header: &[u8]) -> Result<u16, String> {
    let tcp = connect_from(srv, PROXY, header).await;
    let mut tls = tls_over(srv, tcp).await.map_err(|e| e.to_string())?;
    tls.write_all(b"GET /who.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut buf)).await;
    let r = RawResponse::parse(&buf);
    Ok(r.status)
}

fn v1(client: &str) -> Vec<u8> {
    let ip: std::net::IpAddr = client.parse().unwrap();
    let family = if ip.is_ipv4() { "TCP4" } else { "TCP6" };
    let dest = if ip.is_ipv4() {
        "10.0.0.1"
    } else {
        "2001:db8::1"
    };
    format!("PROXY {family} {client} {dest} 51000 443\r\n").into_bytes()
}

fn v2(client: SocketAddr) -> Vec<u8> {
    let dest: SocketAddr = if client.is_ipv4() {
        "10.0.0.1:443".parse().unwrap()
    } else {
        "[2001:db8::1]:443".parse().unwrap()
    };
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, dest),
    )
    .build()
    .unwrap()
}

/// The `client` of every audit entry of a GET of /who.txt.
fn clients_of_who(srv: &TestServer) -> Vec<String> {
    audit_show(srv, &[])
        .iter()
        .filter(|e| e.to_string().contains("who.txt"))
        .filter_map(|e| e["client"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_trusted_proxy_s_header_names_the_client() {
    let srv = TestServer::start(&["--proxy-protocol-from", PROXY, "--log-paths"]);
    assert!(
        srv.stdout()
            .contains("PROXY protocol: connections from 127.0.0.2/32 must begin with its header"),
        "{}",
        srv.stdout()
    );
    // Version 1 and 2, IPv4 and IPv6: each request is the named client's.
    assert_eq!(get_through(&srv, &v1("203.0.113.7")).await, Ok(401));
    assert_eq!(get_through(&srv, &v1("2001:db8::7")).await, Ok(401));
    assert_eq!(
        get_through(&srv, &v2("198.51.100.4:6000".parse().unwrap())).await,
        Ok(401)
    );
    // A balancer's own health check (UNKNOWN) names no client: the balancer's address.
    assert_eq!(get_through(&srv, b"PROXY UNKNOWN\r\n").await, Ok(401));
    let mut clients = clients_of_who(&srv);
    clients.sort();
    assert_eq!(
        clients,
        ["127.0.0.2", "198.51.100.4", "2001:db8::7", "203.0.113.7"],
        "the audit log names the clients the proxy named"
    );
    // The start's entry says which networks are trusted.
    let start = audit_show(&srv, &[])
        .into_iter()
        .find(|e| e.to_string().contains("server-start"))
        .expect("a server-start entry");
    assert!(
        start
            .to_string()
            .contains(r#"\"proxy_protocol_from\":[\"127.0.0.2/32\"]"#),
        "{start}"
    );

    // curl, a real client, sending the header itself (from the proxy's address).
    let out = srv.curl(&[
        "--haproxy-protocol",
        "--interface",
        PROXY,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &srv.url("/_efs/health"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");

    // From the proxy's address, a connection without a header (TLS at once, or anything
    // else) is closed before its handshake; a direct client elsewhere is served as before.
    let no_header = get_through(&srv, b"").await;
    assert!(no_header.is_err(), "{no_header:?}");
    let garbage = get_through(&srv, b"PROXY TCP4 not-an-address\r\n").await;
    assert!(garbage.is_err(), "{garbage:?}");
    // A balancer's TCP health check (connect, close) is not a refusal.
    drop(connect_from(&srv, PROXY, b"").await);
    let direct = srv.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &srv.url("/_efs/health"),
    ]);
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "200", "{direct:?}");
    let metrics = srv.metrics().await.text().await.unwrap();
    assert!(
        metrics.contains("efs_connections_refused_total{reason=\"proxy_header\"} 2"),
        "{metrics}"
    );
}

/// The per-address connection limit counts the client the proxy names, not the proxy.
#[tokio::test]
async fn the_per_address_limit_counts_each_client_behind_the_proxy() {
    let srv = TestServer::start(&[
        "--proxy-protocol-from",
        "127.0.0.2/32",
        "--max-connections-per-address",
        "1",
    ]);
    let first = tls_over(&srv, connect_from(&srv, PROXY, &v1("198.51.100.1")).await)
        .await
        .expect("the first connection of 198.51.100.1");
    // Its second connection is closed at once; another client's is served (the proxy's own
    // address is not counted: its clients are).
    let second = tls_over(&srv, connect_from(&srv, PROXY, &v1("198.51.100.1")).await).await;
    assert!(
        second.is_err(),
        "a second connection of 198.51.100.1 was served"
    );
    let other = tls_over(&srv, connect_from(&srv, PROXY, &v1("198.51.100.2")).await).await;
    assert!(other.is_ok(), "{other:?}");
    drop(first);
    // Once its first connection has ended, the client connects again.
    let mut again = Err(std::io::Error::other("never tried"));
    for _ in 0..50 {
        again = tls_over(&srv, connect_from(&srv, PROXY, &v1("198.51.100.1")).await).await;
        if again.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_ok(), "{again:?}");
}

/// Without the option, or from an address it does not name, a header is never read: a
/// client cannot name itself someone else.
#[tokio::test]
async fn a_header_from_anyone_else_is_not_read() {
    for extra in [&[][..], &["--proxy-protocol-from", "192.0.2.0/24"][..]] {
        let srv = TestServer::start(extra);
        let spoofed = get_through(&srv, &v1("203.0.113.7")).await;
        assert!(spoofed.is_err(), "{extra:?}: {spoofed:?}");
        assert_eq!(get_through(&srv, b"").await, Ok(401), "{extra:?}");
        assert_eq!(clients_of_who(&srv), [PROXY], "{extra:?}");
    }
}

/// Connections from a trusted proxy that have not sent their header are counted against no
/// address: at most half of `--max-connections` may wait at once, so that connections held
/// open through the balancer cannot take every slot from direct clients.
#[tokio::test]
async fn at_most_half_the_connections_wait_for_a_proxy_header() {
    let srv = TestServer::start(&["--proxy-protocol-from", PROXY, "--max-connections", "4"]);
    let first = connect_from(&srv, PROXY, b"").await;
    let _second = connect_from(&srv, PROXY, b"").await;
    // The third is closed at once, while the first still waits for its header.
    let mut third = connect_from(&srv, PROXY, b"").await;
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(30), third.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the third waiting connection was not closed: {closed:?}"
    );
    match first.try_read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the first waiting connection was closed before the third: {other:?}"),
    }
    // Direct clients are still served meanwhile.
    let metrics = srv.metrics().await.text().await.unwrap();
    assert!(
        metrics.contains("efs_connections_refused_total{reason=\"proxy_pending\"} 1"),
        "{metrics}"
    );
}

/// A real balancer: HAProxy in TCP mode in front of the server, sending version 2 and then
/// version 1 headers from 127.0.0.2, with curl as the client from 127.0.0.3. The audit log
/// names curl's address, not HAProxy's; TLS passes through untouched (curl checks the
/// server's certificate).
#[tokio::test]
async fn haproxy_in_front_names_its_clients() {
    let srv = TestServer::start(&["--proxy-protocol-from", PROXY]);
    for send_proxy in ["send-proxy-v2", "send-proxy"] {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = srv.dir.path().join(format!("haproxy-{send_proxy}.cfg"));
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\nbackend be\n  server efs {} {send_proxy} source {PROXY}\n",
                srv.addr
            ),
        )
        .unwrap();
        let mut haproxy = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("haproxy (installed by scripts/test.sh)");
        // Through HAProxy: curl resolves localhost to HAProxy's port, so that the
        // certificate's name matches.
        let mut status = String::new();
        for _ in 0..100 {
            let out = srv.curl(&[
                "--interface",
                "127.0.0.3",
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("https://localhost:{port}/who.txt"),
            ]);
            status = String::from_utf8_lossy(&out.stdout).into_owned();
            if status == "401" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = haproxy.kill();
        let out = haproxy.wait_with_output().unwrap();
        assert_eq!(
            status,
            "401",
            "{send_proxy}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let clients = clients_of_who(&srv);
    assert_eq!(clients, ["127.0.0.3", "127.0.0.3"], "{clients:?}");
}
