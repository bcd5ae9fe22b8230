//! `tailguard serve` end to end: the built binary, real TLS, HTTP/1.1 and HTTP/2,
//! certificate rotation, health endpoints and graceful shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{
    self, Https, PATIENCE, Pki, Proto, Serve, TempDir, assert_review, eventually, path_str, process::SecretVolume,
    run_to_exit, tailscale_daemonset_review, tls_connect,
};

/// The `Content-Type` of `/metrics` on the health listener.
fn metrics_content_type(addr: SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, PATIENCE).ok()?;
    stream.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, _) = response.split_once("\r\n\r\n")?;
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    })
}

/// Writes `request` on a fresh TLS connection and reads what comes back until
/// the server closes it or `wait` passes.
async fn raw_exchange(addr: SocketAddr, ca_pem: &str, request: &[u8], wait: Duration) -> String {
    let mut tls = tls_connect(addr, support::tls_client(ca_pem, &[b"http/1.1"]))
        .await
        .expect("connect");
    tls.write_all(request).await.expect("write");
    tls.flush().await.expect("flush");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(wait, tls.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn reviews_over_http1_and_http2() {
    let dir = TempDir::new("reviews");
    let pki = Pki::new("reviews CA");
    let server = pki.serve(&dir, &[]);
    for (proto, alpn) in [(Proto::Http1, &b"http/1.1"[..]), (Proto::Http2, &b"h2"[..])] {
        let mut conn = Https::connect(server.addr, &pki.ca.cert_pem, proto)
            .await
            .expect("connect");
        assert_eq!(conn.alpn.as_deref(), Some(alpn));
        // Several reviews on one kept-alive connection.
        for i in 0..3 {
            let uid = format!("705ab4f5-{proto:?}-{i}");
            let reply = conn.post_json("/validate", tailscale_daemonset_review(&uid)).await;
            assert_review(&reply, &uid);
        }
        assert!(!conn.is_closed());
    }
    // The mutating endpoint answers the same kind of review (its decision is the core's).
    let mut conn = Https::connect(server.addr, &pki.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    let mutated = assert_review(
        &conn
            .post_json("/mutate", tailscale_daemonset_review("705ab4f5-m"))
            .await,
        "705ab4f5-m",
    );
    if let Some(patch) = mutated["response"]["patch"].as_str() {
        assert_eq!(mutated["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("base64 patch");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&patch)
                .expect("JSON patch")
                .is_array()
        );
    }
    let mutations = server
        .metric("tailguard_reviews_total{endpoint=\"mutate\",result=\"allowed\"}")
        .unwrap_or(0.0)
        + server
            .metric("tailguard_reviews_total{endpoint=\"mutate\",result=\"denied\"}")
            .unwrap_or(0.0);
    assert_eq!(mutations, 1.0);
    // A large review (over 256 KiB: judged on the blocking pool) answers the same.
    let mut conn = Https::connect(server.addr, &pki.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    let padded = format!(
        "{}{}",
        tailscale_daemonset_review("705ab4f5-large"),
        " ".repeat(300 * 1024)
    );
    assert_review(&conn.post_json("/validate", padded).await, "705ab4f5-large");
    let answered = server
        .metric("tailguard_reviews_total{endpoint=\"validate\",result=\"allowed\"}")
        .unwrap_or(0.0)
        + server
            .metric("tailguard_reviews_total{endpoint=\"validate\",result=\"denied\"}")
            .unwrap_or(0.0);
    assert_eq!(answered, 7.0);
    assert_eq!(
        server.metric("tailguard_review_duration_seconds_count{endpoint=\"validate\"}"),
        Some(7.0)
    );
    // One structured log line per review.
    assert!(eventually(PATIENCE, || server.logs("review").len() == 8).await);
    for line in server.logs("review") {
        assert!(
            line["uid"].as_str().is_some_and(|u| u.starts_with("705ab4f5-")),
            "{line}"
        );
        if line["endpoint"] == "validate" {
            assert_eq!(line["object"], "DaemonSet/tailscale/tailscale");
        }
        assert!(
            (line["decision"] == "allowed" || line["decision"] == "denied")
                && line["findings"].is_u64()
                && line["micros"].is_u64(),
            "{line}"
        );
    }
}

/// The review log line carries its `review` span (endpoint, uid, kind, object,
/// decision, micros) and, under it, its `connection` span (number, peer, protocol).
#[tokio::test]
async fn review_log_lines_carry_review_and_connection_spans() {
    let dir = TempDir::new("spans");
    let pki = Pki::new("spans CA");
    let server = pki.serve(&dir, &[]);
    let mut conn = Https::connect(server.addr, &pki.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    let uid = "5b1d7a2e-spans";
    assert_review(&conn.post_json("/validate", tailscale_daemonset_review(uid)).await, uid);
    let line = |s: &String| serde_json::from_str::<serde_json::Value>(s).ok();
    let is_review = |v: &serde_json::Value| v["fields"]["message"] == "review";
    assert!(
        eventually(PATIENCE, || server
            .log_lines()
            .iter()
            .filter_map(line)
            .any(|v| is_review(&v)))
        .await
    );
    let logged = server
        .log_lines()
        .iter()
        .filter_map(line)
        .find(is_review)
        .expect("a review log line");
    // The existing fields are unchanged.
    assert_eq!(logged["fields"]["uid"], uid, "{logged}");
    let span = &logged["span"];
    assert_eq!(span["name"], "review", "{logged}");
    assert_eq!(span["endpoint"], "validate", "{logged}");
    assert_eq!(span["uid"], uid, "{logged}");
    assert_eq!(span["kind"], "DaemonSet", "{logged}");
    assert_eq!(span["object"], "tailscale/tailscale", "{logged}");
    assert!(
        span["decision"] == "allowed" || span["decision"] == "denied",
        "{logged}"
    );
    assert!(span["micros"].is_u64(), "{logged}");
    let spans = logged["spans"].as_array().expect("a span list");
    let connection = spans
        .iter()
        .find(|s| s["name"] == "connection")
        .unwrap_or_else(|| panic!("no connection span: {logged}"));
    assert!(connection["conn"].is_u64(), "{logged}");
    assert_eq!(connection["protocol"], "h2", "{logged}");
    assert!(
        connection["peer"]
            .as_str()
            .is_some_and(|p| p.parse::<SocketAddr>().is_ok()),
        "{logged}"
    );
}

#[tokio::test]
async fn refuses_bad_requests() {
    let dir = TempDir::new("refuses");
    let pki = Pki::new("refuses CA");
    let server = pki.serve(&dir, &["--max-body-bytes", "64Ki"]);
    let mut conn = Https::connect(server.addr, &pki.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    let review = tailscale_daemonset_review("uid-1");

    let wrong_type = conn
        .request("POST", "/validate", Some("text/plain"), review.clone())
        .await
        .expect("send");
    assert_eq!(wrong_type.status, 415);
    let no_type = conn
        .request("POST", "/validate", None, review.clone())
        .await
        .expect("send");
    assert_eq!(no_type.status, 415);
    let charset = conn
        .request(
            "POST",
            "/validate",
            Some("application/json; charset=utf-8"),
            review.clone(),
        )
        .await
        .expect("send");
    assert_review(&charset, "uid-1");

    // Over the limit (64 KiB), whitespace-padded so it would otherwise be valid.
    let big = format!("{review}{}", " ".repeat(70 * 1024));
    let too_large = conn.post_json("/validate", big).await;
    assert_eq!(too_large.status, 413, "{}", too_large.text());
    let just_fits = format!("{review}{}", " ".repeat(60 * 1024));
    assert_review(&conn.post_json("/validate", just_fits).await, "uid-1");

    let malformed = conn.post_json("/validate", "{\"apiVersion\": ").await;
    assert_eq!(malformed.status, 400);
    assert!(malformed.text().contains("JSON"), "{}", malformed.text());
    let not_a_review = conn
        .post_json("/validate", "{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}")
        .await;
    assert_eq!(not_a_review.status, 400);
    let no_request = conn
        .post_json(
            "/validate",
            "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
        )
        .await;
    assert_eq!(no_request.status, 400);
    let binary = conn.post_json("/validate", vec![0xff, 0xfe, 0x00, 0x7b]).await;
    assert_eq!(binary.status, 400);

    let get = conn.request("GET", "/validate", None, "").await.expect("send");
    assert_eq!(get.status, 405);
    let unknown = conn.post_json("/nope", review.clone()).await;
    assert_eq!(unknown.status, 404);
    assert!(!conn.is_closed(), "refusals must not cost the connection");

    // HTTP/1.1: a declared length over the limit is refused before the body is read.
    let declared = raw_exchange(
        server.addr,
        &pki.ca.cert_pem,
        b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");

    // Still serving.
    assert_review(&conn.post_json("/validate", review).await, "uid-1");
    assert_eq!(
        server.metric("tailguard_reviews_total{endpoint=\"validate\",result=\"error\"}"),
        Some(8.0)
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let dir = TempDir::new("health");
    let pki = Pki::new("health CA");
    let server = pki.serve(&dir, &[]);
    assert_eq!(server.health_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(server.health_get("/readyz"), (200, "ok\n".to_string()));
    assert_eq!(server.health_get("/nope").0, 404);

    let mut conn = Https::connect(server.addr, &pki.ca.cert_pem, Proto::Http1)
        .await
        .expect("connect");
    assert_review(
        &conn.post_json("/validate", tailscale_daemonset_review("m-1")).await,
        "m-1",
    );

    let (status, text) = server.health_get("/metrics");
    assert_eq!(status, 200);
    // OpenMetrics: a counter family is named without `_total`, its samples with it.
    for expected in [
        "# TYPE tailguard_reviews counter\n",
        "# TYPE tailguard_findings counter\n",
        "# TYPE tailguard_review_duration_seconds histogram\n",
        "tailguard_review_duration_seconds_bucket{le=\"0.00005\",endpoint=\"validate\"} ",
        "tailguard_review_duration_seconds_bucket{le=\"+Inf\",endpoint=\"validate\"} 1\n",
        "tailguard_review_duration_seconds_count{endpoint=\"validate\"} 1\n",
        "tailguard_tls_reloads_total{result=\"success\"} 0\n",
        "tailguard_tls_reloads_total{result=\"failure\"} 0\n",
        "tailguard_namespace_cache_ready 0\n",
        "tailguard_connections_open 1\n",
        "# TYPE process_cpu_seconds counter\n",
        "# TYPE process_start_time_seconds gauge\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(text.ends_with("\n# EOF\n"), "{text}");
    // Every sample line is `name{labels} value` with a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    for gauge in ["process_resident_memory_bytes", "process_open_fds", "process_max_fds"] {
        assert!(server.metric(gauge).is_some_and(|v| v > 0.0), "{gauge} in\n{text}");
    }
    assert!(
        server.metric("process_cpu_seconds_total").is_some_and(|v| v >= 0.0),
        "{text}"
    );
    let started = server
        .metric("process_start_time_seconds")
        .expect("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(started <= now + 1.0 && started > now - 600.0, "{started} vs {now}");
    assert_eq!(
        metrics_content_type(server.health_addr).as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let expiry = server
        .metric("tailguard_tls_cert_expiry_timestamp_seconds")
        .expect("expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!((expiry - (now + 48.0 * 3600.0)).abs() < 120.0, "{expiry} vs {now}");
}

#[tokio::test]
async fn readiness_waits_for_the_namespace_cache() {
    let dir = TempDir::new("cluster");
    let pki = Pki::new("cluster CA");
    // An apiserver that refuses connections: the cache never syncs, the webhook still answers.
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\n\
         users:\n- name: u\n  user: {}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
         current-context: x\n",
    )
    .expect("write kubeconfig");
    let server = pki.serve(&dir, &["--kubeconfig", path_str(&kubeconfig)]);
    assert_eq!(server.health_get("/healthz").0, 200);
    let (status, reason) = server.health_get("/readyz");
    assert_eq!(status, 503);
    assert!(reason.contains("namespace cache"), "{reason}");
    assert_eq!(server.metric("tailguard_namespace_cache_ready"), Some(0.0));
    let mut conn = Https::connect(server.addr, &pki.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    assert_review(
        &conn.post_json("/validate", tailscale_daemonset_review("c-1")).await,
        "c-1",
    );
    assert!(
        eventually(PATIENCE, || !server
            .logs("namespace watch failed; namespace-aware rules are skipped (and reviews say so) until namespaces are listed again")
            .is_empty())
        .await
    );
}

#[tokio::test]
async fn bad_handshakes_do_not_disturb_other_clients() {
    let dir = TempDir::new("handshakes");
    let pki = Pki::new("handshakes CA");
    let server = pki.serve(&dir, &["--handshake-timeout", "500ms"]);
    let ca = &pki.ca.cert_pem;
    let mut good = Https::connect(server.addr, ca, Proto::Http2).await.expect("connect");
    assert_review(
        &good.post_json("/validate", tailscale_daemonset_review("h-1")).await,
        "h-1",
    );

    // Plain HTTP to the TLS port: no HTTP answer, connection closed.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "plain HTTP connection was not closed");
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"));

    // A TLS 1.0-only ClientHello: refused (alert or close).
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x01];
    hello.extend_from_slice(&[7; 32]); // random
    hello.extend_from_slice(&[0x00, 0x00, 0x04, 0xc0, 0x14, 0x00, 0x2f, 0x01, 0x00]);
    let mut old = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    old.write_all(&hello).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, old.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "TLS 1.0 connection was not closed");
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "expected a TLS alert, got {answer:?}"
    );

    // A client that never says anything is dropped after the handshake timeout.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "silent connection was not closed: {read:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // TLS 1.2 clients are served.
    let tls12 = support::tls_client_versions(ca, &[b"http/1.1"], &[&rustls::version::TLS12]);
    let stream = tls_connect(server.addr, tls12).await.expect("TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    drop(stream);

    // The earlier connection and new ones are unaffected.
    assert_review(
        &good.post_json("/validate", tailscale_daemonset_review("h-2")).await,
        "h-2",
    );
    let mut fresh = Https::connect(server.addr, ca, Proto::Http1).await.expect("connect");
    assert_review(
        &fresh.post_json("/validate", tailscale_daemonset_review("h-3")).await,
        "h-3",
    );
    assert!(server.metric("tailguard_tls_handshake_failures_total").unwrap_or(0.0) >= 3.0);
}

/// Connects with a client that trusts only `ca_pem`, until that works; returns how long it took.
async fn wait_until_trusted(addr: SocketAddr, ca_pem: &str) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < PATIENCE {
        if Https::connect(addr, ca_pem, Proto::Http1).await.is_ok() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

#[tokio::test]
async fn reloads_certificates_from_a_secret_volume() {
    let dir = TempDir::new("rotate-secret");
    let first = Pki::new("first CA");
    let mut volume = SecretVolume::create(dir.join("tls"), &first.serving.cert_pem, &first.serving.key_pem);
    let server = Serve::start(&[
        "--tls-cert",
        path_str(&volume.cert()),
        "--tls-key",
        path_str(&volume.key()),
    ]);
    let mut old = Https::connect(server.addr, &first.ca.cert_pem, Proto::Http1)
        .await
        .expect("connect");
    assert_review(
        &old.post_json("/validate", tailscale_daemonset_review("r-1")).await,
        "r-1",
    );
    let mut old_h2 = Https::connect(server.addr, &first.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");

    let second = Pki::new("second CA");
    volume.rotate(&second.serving.cert_pem, &second.serving.key_pem);
    // Served within PATIENCE; how soon is a benchmark figure, not asserted.
    let picked_up = wait_until_trusted(server.addr, &second.ca.cert_pem)
        .await
        .expect("new certificate served");
    eprintln!("rotation (..data swap) picked up after {picked_up:?}");

    let mut new = Https::connect(server.addr, &second.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    assert_review(
        &new.post_json("/validate", tailscale_daemonset_review("r-2")).await,
        "r-2",
    );
    // Connections made before the rotation keep working.
    assert_review(
        &old.post_json("/validate", tailscale_daemonset_review("r-3")).await,
        "r-3",
    );
    assert_review(
        &old_h2.post_json("/validate", tailscale_daemonset_review("r-4")).await,
        "r-4",
    );
    // The old CA no longer vouches for new connections.
    assert!(
        Https::connect(server.addr, &first.ca.cert_pem, Proto::Http1)
            .await
            .is_err()
    );
    assert_eq!(
        server.metric("tailguard_tls_reloads_total{result=\"success\"}"),
        Some(1.0)
    );

    // A broken pair (key of another certificate) is refused; the last good one keeps serving.
    let third = Pki::new("third CA");
    volume.rotate(&third.serving.cert_pem, &second.serving.key_pem);
    assert!(
        eventually(PATIENCE, || {
            server
                .metric("tailguard_tls_reloads_total{result=\"failure\"}")
                .unwrap_or(0.0)
                >= 1.0
        })
        .await
    );
    let mut still = Https::connect(server.addr, &second.ca.cert_pem, Proto::Http1)
        .await
        .expect("still served");
    assert_review(
        &still.post_json("/validate", tailscale_daemonset_review("r-5")).await,
        "r-5",
    );
    assert!(
        Https::connect(server.addr, &third.ca.cert_pem, Proto::Http1)
            .await
            .is_err()
    );
    assert_eq!(
        server.metric("tailguard_tls_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn reloads_renamed_certificate_files() {
    let dir = TempDir::new("rotate-files");
    let first = Pki::new("first CA");
    let server = first.serve(&dir, &["--cert-poll-interval", "200ms"]);
    let mut old = Https::connect(server.addr, &first.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    assert_review(
        &old.post_json("/validate", tailscale_daemonset_review("f-1")).await,
        "f-1",
    );

    // Each file replaced atomically, one after the other (the pair is briefly mismatched).
    let second = Pki::new("second CA");
    for (name, pem) in [
        ("tls.key", &second.serving.key_pem),
        ("tls.crt", &second.serving.cert_pem),
    ] {
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::write(&tmp, pem).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
    let picked_up = wait_until_trusted(server.addr, &second.ca.cert_pem)
        .await
        .expect("new certificate served");
    eprintln!("rotation (renamed files, 200ms poll) picked up after {picked_up:?}");
    assert_review(
        &old.post_json("/validate", tailscale_daemonset_review("f-2")).await,
        "f-2",
    );
    assert!(eventually(PATIENCE, || !server.logs("serving certificate reloaded").is_empty()).await);
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = TempDir::new("sigterm");
    let pki = Pki::new("sigterm CA");
    let mut server = pki.serve(&dir, &[]);
    let ca = &pki.ca.cert_pem;
    // Idle keep-alive connections, HTTP/1.1 and HTTP/2.
    let mut h1 = Https::connect(server.addr, ca, Proto::Http1).await.expect("connect");
    assert_review(
        &h1.post_json("/validate", tailscale_daemonset_review("s-1")).await,
        "s-1",
    );
    let mut h2 = Https::connect(server.addr, ca, Proto::Http2).await.expect("connect");
    assert_review(
        &h2.post_json("/validate", tailscale_daemonset_review("s-2")).await,
        "s-2",
    );
    // A review in flight: headers and half of the body sent.
    let body = tailscale_daemonset_review("s-3");
    let (head, tail) = body.as_bytes().split_at(body.len() / 2);
    let mut in_flight = tls_connect(server.addr, support::tls_client(ca, &[b"http/1.1"]))
        .await
        .expect("connect");
    let headers = format!(
        "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    in_flight.write_all(headers.as_bytes()).await.expect("write");
    in_flight.write_all(head).await.expect("write");
    in_flight.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let signalled = Instant::now();
    server.signal("TERM");
    // Idle connections are closed at once; readiness fails while draining.
    assert!(eventually(PATIENCE, || h1.is_closed() && h2.is_closed()).await);
    eprintln!("idle connections closed {:?} after SIGTERM", signalled.elapsed());
    assert!(
        server.wait_exit(Duration::from_millis(300)).await.is_none(),
        "exited with a review in flight"
    );

    // The in-flight review completes.
    in_flight.write_all(tail).await.expect("write rest");
    in_flight.flush().await.expect("flush");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, in_flight.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"uid\":\"s-3\""), "{response}");

    let status = server.wait_exit(PATIENCE).await.expect("exited");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(
        !server.logs("shut down").is_empty() || eventually(PATIENCE, || !server.logs("shut down").is_empty()).await
    );
}

/// With `--shutdown-delay`, an idle HTTP/1.1 connection (the apiserver's
/// kind) is not closed at SIGTERM, where it would race with a review being
/// written onto it: it stays until the delay ends, and a review on it is
/// answered with `Connection: close`. HTTP/2 gets GOAWAY at once.
#[tokio::test]
async fn sigterm_keeps_http1_connections_through_the_delay_then_closes_them_after_a_response() {
    let dir = TempDir::new("sigterm-delay");
    let pki = Pki::new("sigterm-delay CA");
    let mut server = pki.serve(&dir, &["--shutdown-delay", "2s"]);
    let ca = &pki.ca.cert_pem;
    let mut h1 = Https::connect(server.addr, ca, Proto::Http1).await.expect("connect");
    let mut kept = Https::connect(server.addr, ca, Proto::Http1).await.expect("connect");
    let mut h2 = Https::connect(server.addr, ca, Proto::Http2).await.expect("connect");
    for (conn, uid) in [(&mut h1, "d-1"), (&mut kept, "d-2"), (&mut h2, "d-3")] {
        assert_review(&conn.post_json("/validate", tailscale_daemonset_review(uid)).await, uid);
    }
    let signalled = Instant::now();
    server.signal("TERM");
    assert!(eventually(PATIENCE, || h2.is_closed()).await, "HTTP/2: GOAWAY at once");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !h1.is_closed() && !kept.is_closed(),
        "HTTP/1.1 connections kept during the delay"
    );
    // A review on a kept connection is answered, and the connection then closed.
    let reply = h1.post_json("/validate", tailscale_daemonset_review("d-4")).await;
    assert_review(&reply, "d-4");
    assert_eq!(
        reply.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "{:?}",
        reply.headers
    );
    assert!(eventually(PATIENCE, || h1.is_closed()).await);
    // The idle one is closed when the delay ends, and the server exits.
    assert!(eventually(PATIENCE, || kept.is_closed()).await);
    let closed_after = signalled.elapsed();
    assert!(closed_after >= Duration::from_secs(2), "{closed_after:?}");
    let status = server.wait_exit(PATIENCE).await.expect("exited");
    assert!(status.success(), "{status:?}");
    eprintln!("idle HTTP/1.1 connection closed {closed_after:?} after SIGTERM (delay 2 s)");
}

#[tokio::test]
async fn sigterm_with_only_idle_connections_exits_promptly() {
    let dir = TempDir::new("sigterm-idle");
    let pki = Pki::new("sigterm idle CA");
    let mut server = pki.serve(&dir, &[]);
    let mut h1 = Https::connect(server.addr, &pki.ca.cert_pem, Proto::Http1)
        .await
        .expect("connect");
    assert_review(
        &h1.post_json("/validate", tailscale_daemonset_review("i-1")).await,
        "i-1",
    );
    let _h2 = Https::connect(server.addr, &pki.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    let signalled = Instant::now();
    server.signal("TERM");
    // Promptly: not after the 15 s grace an in-flight request would get (how
    // soon is a benchmark figure, printed).
    let status = server.wait_exit(PATIENCE).await.expect("exited promptly");
    eprintln!("idle-only shutdown took {:?}", signalled.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(eventually(PATIENCE, || h1.is_closed()).await);
}

#[tokio::test]
async fn shutdown_delay_keeps_accepting_while_unready() {
    let dir = TempDir::new("shutdown-delay");
    let pki = Pki::new("shutdown delay CA");
    // A delay long enough that the late client below connects within it
    // however slow the machine is: that it is served proves it.
    let mut server = pki.serve(&dir, &["--shutdown-delay", "3s"]);
    let ca = &pki.ca.cert_pem;
    let mut idle = Https::connect(server.addr, ca, Proto::Http2).await.expect("connect");
    assert_review(
        &idle.post_json("/validate", tailscale_daemonset_review("w-1")).await,
        "w-1",
    );
    let signalled = Instant::now();
    server.signal("TERM");
    // Existing connections are told to go at once; readiness fails...
    assert!(eventually(PATIENCE, || idle.is_closed()).await);
    assert!(eventually(PATIENCE, || server.health_get("/readyz").0 == 503).await);
    assert!(server.health_get("/readyz").1.contains("shutting down"));
    // ...but a client that has not noticed yet is still served during the delay.
    eprintln!("SIGTERM: idle closed and unready after {:?}", signalled.elapsed());
    let mut late = Https::connect(server.addr, ca, Proto::Http1)
        .await
        .expect("connect during the delay");
    assert_review(
        &late.post_json("/validate", tailscale_daemonset_review("w-2")).await,
        "w-2",
    );
    let status = server.wait_exit(PATIENCE).await.expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(2900),
        "exited {:?} after SIGTERM, before the 3 s delay",
        signalled.elapsed()
    );
    assert!(eventually(PATIENCE, || late.is_closed()).await);
}

#[tokio::test]
async fn dev_mode_prints_ca_bundle_and_reuses_certificates() {
    let dir = TempDir::new("dev");
    let certs_dir = dir.join("certs");
    let args = ["--dev", "--certs-dir", path_str(&certs_dir)];

    let mut first = Serve::start(&args);
    assert!(first.wait_health_ok("/readyz", PATIENCE));
    eprintln!("--dev first start (CA generated): listening after {:?}", first.startup);
    let bundle_line = || first.log_lines().into_iter().find(|l| l.starts_with("caBundle: "));
    assert!(eventually(PATIENCE, || bundle_line().is_some()).await);
    let bundle = bundle_line()
        .and_then(|l| l.strip_prefix("caBundle: ").map(str::to_string))
        .expect("line");
    let ca_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(bundle.trim())
            .expect("caBundle is base64"),
    )
    .expect("PEM");
    assert_eq!(
        ca_pem,
        std::fs::read_to_string(certs_dir.join("ca.crt")).expect("ca.crt")
    );
    for key in ["tls.key", "ca.key"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(certs_dir.join(key))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let mut conn = Https::connect(first.addr, &ca_pem, Proto::Http2)
        .await
        .expect("trusts the printed caBundle");
    assert_review(
        &conn.post_json("/validate", tailscale_daemonset_review("d-1")).await,
        "d-1",
    );
    drop(conn);
    first.signal("TERM");
    assert!(first.wait_exit(PATIENCE).await.expect("exit").success());

    // A restart reuses the CA, so a registered caBundle keeps working.
    let second = Serve::start(&args);
    let ready = Instant::now();
    assert!(second.wait_health_ok("/readyz", PATIENCE));
    eprintln!(
        "--dev restart (certificates reused): listening after {:?}, ready {:?} later",
        second.startup,
        ready.elapsed()
    );
    assert!(
        eventually(PATIENCE, || second
            .log_lines()
            .iter()
            .any(|l| l == &format!("caBundle: {bundle}")))
        .await
    );
    assert!(!second.logs("reusing development certificates").is_empty());
    let mut conn = Https::connect(second.addr, &ca_pem, Proto::Http1)
        .await
        .expect("same CA");
    assert_review(
        &conn.post_json("/validate", tailscale_daemonset_review("d-2")).await,
        "d-2",
    );
}

#[test]
fn startup_fails_clearly_without_usable_certificates() {
    let dir = TempDir::new("startup");
    let listen = ["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"];
    let failing = |extra: &[&str]| {
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&listen);
        let (status, _, stderr) = run_to_exit(&args, PATIENCE);
        let status = status.expect("exits by itself");
        assert!(!status.success(), "{args:?} started:\n{stderr}");
        stderr
    };

    let missing = dir.join("missing.crt");
    let stderr = failing(&[
        "--tls-cert",
        path_str(&missing),
        "--tls-key",
        path_str(&dir.join("missing.key")),
    ]);
    assert!(stderr.contains("missing.crt"), "{stderr}");

    let a = Pki::new("a");
    let b = Pki::new("b");
    let (cert, _) = a.write_to(&dir.join("a"));
    let (_, other_key) = b.write_to(&dir.join("b"));
    let stderr = failing(&["--tls-cert", path_str(&cert), "--tls-key", path_str(&other_key)]);
    assert!(
        stderr.contains("tls.crt") && stderr.to_lowercase().contains("key"),
        "{stderr}"
    );

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all").expect("write");
    let stderr = failing(&["--tls-cert", path_str(&garbage), "--tls-key", path_str(&garbage)]);
    assert!(stderr.contains("garbage.pem"), "{stderr}");

    let stderr = failing(&[]);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

#[tokio::test]
async fn in_process_server_binds_port_zero_and_stops() {
    let dir = TempDir::new("in-process");
    let pki = Pki::new("in-process CA");
    let (cert, key) = pki.write_to(dir.path());
    let args = tailguard::server::ServeArgs::try_parse_from([
        "--tls-cert",
        path_str(&cert),
        "--tls-key",
        path_str(&key),
        "--listen",
        "127.0.0.1:0",
        "--health-listen",
        "127.0.0.1:0",
    ])
    .expect("flags");
    let server = tailguard::server::Server::bind(args).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let health_addr = server.health_addr().expect("health addr");
    assert_ne!(addr.port(), 0);
    assert!(server.ca_bundle().is_none());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let mut conn = Https::connect(addr, &pki.ca.cert_pem, Proto::Http2)
        .await
        .expect("connect");
    assert_review(
        &conn.post_json("/validate", tailscale_daemonset_review("p-1")).await,
        "p-1",
    );
    let health = tokio::task::spawn_blocking(move || support::http_get(health_addr, "/readyz"))
        .await
        .expect("health");
    assert_eq!(health.0, 200);
    let _ = stop.send(());
    let result = tokio::time::timeout(PATIENCE, serving)
        .await
        .expect("stops")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
    assert!(conn.is_closed() || eventually(PATIENCE, || conn.is_closed()).await);
}
