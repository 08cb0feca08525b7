//! nginx as a plain TLS gateway in front of the direct endpoint - what an
//! agency's API gateway costs: it terminates the same mutual TLS, then
//! forwards each request over a kept-alive TLS connection upstream.
//! nginx itself comes from Debian's packages (`.ci/nginx` installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use hub_core::ids::Member;
use hub_server::pki::PkiPaths;

use super::process::Process;

/// The nginx binary, if installed.
pub fn binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The configuration: `listen` with the hub's server certificate, client
/// certificates required against the hub's CA, requests proxied to
/// `upstream` over TLS presenting `client`'s certificate.
pub fn config(
    prefix: &Path,
    pki: &PkiPaths,
    listen: SocketAddr,
    upstream: SocketAddr,
    client: &Member,
) -> String {
    let p = |path: PathBuf| path.display().to_string();
    format!(
        r#"# Written by hub-report: nginx as a TLS reverse proxy (the "plain gateway").
daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream direct {{
        server {upstream};
        keepalive 256;
        keepalive_requests 10000000;
    }}
    server {{
        listen {listen} ssl;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass https://direct;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate {client_cert};
            proxy_ssl_certificate_key {client_key};
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"#,
        prefix = prefix.display(),
        server_cert = p(pki.server_cert()),
        server_key = p(pki.server_key()),
        ca = p(pki.ca_cert()),
        client_cert = p(pki.agency_cert(client)),
        client_key = p(pki.agency_key(client)),
    )
}

/// Write the configuration under `prefix` and start nginx on it.
pub fn start(
    nginx: &Path,
    prefix: &Path,
    logs: &Path,
    pki: &PkiPaths,
    upstream: SocketAddr,
    client: &Member,
) -> anyhow::Result<(Process, SocketAddr)> {
    let listen = super::process::free_local_addr()?;
    std::fs::create_dir_all(prefix)?;
    // nginx reads relative paths against its prefix, not the working directory.
    let prefix = &std::path::absolute(prefix)?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config(prefix, pki, listen, upstream, client))
        .with_context(|| format!("writing {}", conf.display()))?;
    let mut command = Command::new(nginx);
    command
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf)
        // Before it reads the configuration nginx logs to its built-in path.
        .arg("-e")
        .arg(prefix.join("error.log"));
    let process =
        Process::start_listening("nginx", command, logs, listen, Duration::from_secs(10))?;
    Ok((process, listen))
}
