//! `starling-probe URL`: a health-check client for the FROM-scratch image, which has no shell,
//! curl or wget. It sends `GET` to an `http://HOST:PORT/PATH` URL and exits 0 on a 2xx answer,
//! 1 otherwise (printing the status line and body), so Docker and Compose health checks can
//! use the admin endpoint's `/readyz` and `/healthz`.
//!
//! std only; `deploy/docker/build.sh` compiles it with `rustc` as a static binary.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn probe(url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    Ok((code, body.trim().to_string()))
}

fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080/readyz".to_string());
    match probe(&url) {
        Ok((code, body)) if (200..300).contains(&code) => {
            println!("{code} {body}");
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            println!("{code} {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("starling-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
