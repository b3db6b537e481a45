//! The HTTP side of `serve`: hyper's HTTP/1 server on a thread and a
//! current-thread tokio runtime of its own, so that no scrape, slow client
//! or flood of connections runs on the event loop's thread. Limits: a
//! client has `HEADER_READ_TIMEOUT` to send its request head (an idle
//! connection is closed then, kept-alive ones too), heads over
//! `MAX_HEAD_BYTES` get 431, at most `MAX_CONNECTIONS` are open at once
//! (more are closed at accept), and only GET and HEAD of `/` and
//! `/metrics`, without a body, are answered with 200.
use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::{Body, Incoming},
    header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{prometheus_text, text},
    registry::Registry,
};

use super::metrics::{self, Latest};

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's read buffer, and so the largest request head (its minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_CONNECTIONS: usize = 256;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const LANDING: &str = "<!DOCTYPE html>
<html><head><meta charset=\"utf-8\"><title>tcptrace</title></head>
<body><h1>tcptrace</h1>
<p>TCP state transitions, TIME_WAIT and CLOSE_WAIT, for Prometheus.</p>
<p><a href=\"/metrics\">/metrics</a></p>
</body></html>
";

/// The listening socket, bound now so that a bad address or a port in use
/// fails before anything else is done.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("--listen {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `latest` on `listener` from a thread of its own, until the
/// process exits.
pub fn spawn(listener: TcpListener, latest: Latest) -> Result<()> {
    let registry = Arc::new(metrics::registry(latest));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("the HTTP server's runtime")?;
    std::thread::Builder::new()
        .name("tcptrace-http".into())
        .spawn(move || runtime.block_on(accept(listener, registry)))
        .context("starting the HTTP server's thread")?;
    Ok(())
}

async fn accept(listener: TcpListener, registry: Arc<Registry>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of fds or memory: let connections close first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let open = Arc::clone(&open);
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(|request| {
                let response = respond(&request, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let has_body = request.body().size_hint().upper() != Some(0);
    let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    route(
        request.method(),
        request.uri().path(),
        has_body,
        accept,
        registry,
    )
}

/// The response to a request, by method, path and Accept header.
pub fn route(
    method: &Method,
    path: &str,
    has_body: bool,
    accept: Option<&str>,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if has_body {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a request body is not accepted\n",
        );
    }
    match path {
        "/metrics" => {
            let (body, content_type) = render(registry, wants_openmetrics(accept));
            with_type(StatusCode::OK, body, content_type)
        }
        "/" => with_type(StatusCode::OK, LANDING.into(), "text/html; charset=utf-8"),
        _ => plain(StatusCode::NOT_FOUND, "not found: try /metrics\n"),
    }
}

/// The exposition: OpenMetrics or the Prometheus text format (0.0.4).
pub fn render(registry: &Registry, openmetrics: bool) -> (String, &'static str) {
    let mut out = String::with_capacity(64 * 1024);
    let encoded = if openmetrics {
        text::encode(&mut out, registry)
    } else {
        prometheus_text::encode(&mut out, registry)
    };
    // Writing into a String cannot fail; a label value it cannot encode
    // would be a bug, shown rather than hidden.
    if let Err(err) = encoded {
        out = format!("# encoding failed: {err}\n");
    }
    let content_type = if openmetrics {
        OPENMETRICS
    } else {
        prometheus_text::CONTENT_TYPE
    };
    (out, content_type)
}

/// Content negotiation: OpenMetrics when the Accept header ranks it at
/// least as high as the text format (Prometheus asks for it first).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut openmetrics = 0.0f64;
    let mut plain = 0.0f64;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f64>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= plain
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_type(status, text.into(), "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(Some(
            "text/plain;q=1,application/openmetrics-text;q=0.5"
        )));
    }

    #[test]
    fn routes() {
        let registry = metrics::registry(Default::default());
        let status = |method: Method, path: &str, body: bool| {
            route(&method, path, body, None, &registry).status()
        };
        assert_eq!(status(Method::GET, "/metrics", false), StatusCode::OK);
        assert_eq!(status(Method::HEAD, "/", false), StatusCode::OK);
        assert_eq!(status(Method::GET, "/x", false), StatusCode::NOT_FOUND);
        assert_eq!(
            status(Method::POST, "/metrics", false),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::GET, "/metrics", true),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
