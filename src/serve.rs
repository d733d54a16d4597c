//! `selfish serve`: the page (`web/`), its WebAssembly (`web/pkg/`), tiny Shakespeare
//! (`data/`) and the reference fixtures (`tests/fixtures/`, for the page's `?fixture=1`)
//! on 127.0.0.1, so nothing the page needs comes from anywhere else.

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// Where a URL path is served from under the repository `root`.
pub fn file_for(root: &Path, url: &str) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let rel = path.trim_start_matches('/');
    // Plain names only: no escapes, no way out of the folders served.
    if rel.contains(['%', '\\'])
        || Path::new(rel)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let (dir, rest) = match rel.split_once('/') {
        Some(("data", rest)) => ("data", rest),
        Some(("fixtures", rest)) => ("tests/fixtures", rest),
        _ => ("web", rel),
    };
    let rest = if rest.is_empty() || rest.ends_with('/') {
        format!("{rest}index.html")
    } else {
        rest.to_string()
    };
    Some(root.join(dir).join(rest))
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        // instantiateStreaming refuses the module under any other type
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

/// The repository to serve: `dir` if given, else the current folder when it holds the
/// page, else the checkout this binary was built from.
pub fn root(dir: Option<&Path>) -> Result<PathBuf> {
    let page = |d: &Path| d.join("web/index.html").is_file();
    let built = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = match dir {
        Some(d) => d.to_path_buf(),
        None if page(Path::new(".")) => PathBuf::from("."),
        None if page(built) => built.to_path_buf(),
        None => PathBuf::from("."),
    };
    if !page(&root) {
        bail!(
            "'{}' holds no web/index.html: run `selfish serve` in the selfish repository, or pass --dir REPO",
            root.display()
        );
    }
    Ok(root)
}

/// Binds 127.0.0.1:`port` (0: any free port); the bound address is in the listener.
pub fn bind(port: u16) -> Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).map_err(|e| match e.kind() {
        ErrorKind::AddrInUse => anyhow!(
            "port {port} on 127.0.0.1 is in use: pass another --port, or stop the program that holds it"
        ),
        _ => anyhow!("cannot listen on 127.0.0.1:{port}: {e}: pass another --port"),
    })
}

/// Answers requests until the process ends.
pub fn serve(root: &Path, listener: TcpListener) -> Result<()> {
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow!("cannot start the HTTP server: {e}"))?;
    for req in server.incoming_requests() {
        let file = file_for(root, req.url()).filter(|p| p.is_file());
        let header = |k: &str, v: &str| {
            tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header")
        };
        let reply = match (req.method(), file) {
            (tiny_http::Method::Get | tiny_http::Method::Head, Some(p)) => match fs::read(&p) {
                Ok(bytes) => tiny_http::Response::from_data(bytes)
                    .with_header(header("Content-Type", content_type(&p)))
                    // A rebuilt web/pkg is picked up on reload.
                    .with_header(header("Cache-Control", "no-store")),
                Err(e) => tiny_http::Response::from_string(format!("cannot read: {e}"))
                    .with_status_code(500),
            },
            (tiny_http::Method::Get | tiny_http::Method::Head, None) => {
                tiny_http::Response::from_string("not found").with_status_code(404)
            }
            _ => tiny_http::Response::from_string("only GET").with_status_code(405),
        };
        // A browser that closed the connection early is no error of ours.
        let _ = req.respond(reply);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_into_the_served_folders_only() {
        let r = Path::new("/repo");
        let f = |u| file_for(r, u).map(|p| p.display().to_string());
        for (url, file) in [
            ("/", "web/index.html"),
            ("/?autorun=1&steps=3", "web/index.html"),
            ("/pkg/selfish.js", "web/pkg/selfish.js"),
            ("/data/tinyshakespeare.txt", "data/tinyshakespeare.txt"),
            (
                "/fixtures/gpt-tiny/init.safetensors",
                "tests/fixtures/gpt-tiny/init.safetensors",
            ),
        ] {
            assert_eq!(f(url), Some(format!("/repo/{file}")), "{url}");
        }
        for bad in [
            "/../Cargo.toml",
            "/data/../src/lib.rs",
            "/%2e%2e/x",
            "/a\\b",
        ] {
            assert_eq!(f(bad), None, "{bad}");
        }
        assert_eq!(content_type(Path::new("x.wasm")), "application/wasm");
    }
}
