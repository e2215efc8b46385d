//! Secure defaults (issue 14): the bundled server's client listener stays on loopback unless
//! configured otherwise, its config files are private, and the binary is verified before every
//! start and restart.

use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use harmonylite::config::Config;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;

use crate::harness::{Node, eventually, test_config};

/// A config with the bundled server's default client listener (the harness pins loopback).
fn default_listener_config(dir: &Path) -> Config {
    let mut cfg = test_config(dir, 1);
    cfg.nats.bind_address = Config::default().nats.bind_address;
    cfg
}

/// An IPv4 address of this machine that is not loopback, if it has one.
fn non_loopback_ipv4() -> Option<IpAddr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read `sockaddr_in` entries.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = addrs;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() && i32::from((*sa).sa_family) == libc::AF_INET {
                let sin = &*(sa as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    found = Some(IpAddr::V4(ip));
                    break;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(addrs);
        found
    }
}

#[tokio::test]
async fn default_client_listener_is_loopback_only_and_config_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = default_listener_config(dir.path());
    let operator = dir.path().join("operator.conf");
    std::fs::write(&operator, "# the operator's own settings\n").unwrap();
    std::fs::set_permissions(&operator, std::fs::Permissions::from_mode(0o644)).unwrap();
    cfg.nats.server_config = operator.to_string_lossy().into_owned();
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let server = node.status.server().expect("embedded server");
    let port = u16::try_from(server.client_port()).unwrap();

    let nats_dir = node.cfg.data_dir().join("nats");
    for name in ["nats-server.conf", "operator.conf"] {
        let mode = std::fs::metadata(nats_dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {mode:o}");
    }
    let conf = std::fs::read_to_string(nats_dir.join("nats-server.conf")).unwrap();
    assert!(conf.contains("listen: \"127.0.0.1:-1\""), "{conf}");

    // This node's own connection works on loopback; another interface of the machine is closed.
    assert!(node.status.nats_connected());
    TcpStream::connect(("127.0.0.1", port)).expect("loopback client port");
    if let Some(ip) = non_loopback_ipv4() {
        let outside = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2));
        assert!(outside.is_err(), "client port {port} answers on {ip}");
    }
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_binary_is_replaced_before_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path(), 1), EmbeddedOptions::default()).await;
    let server = node.status.server().expect("embedded server");
    let binary = node.cfg.data_dir().join("nats").join("nats-server");
    let genuine = std::fs::read(&binary).unwrap();

    // An impostor that leaves a mark and then runs the real server, swapped in by rename (the
    // running executable cannot be written in place).
    // Named like the real one: nats-server names its ports file after its executable.
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let real = dir.path().join("real").join("nats-server");
    std::fs::write(&real, &genuine).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mark = dir.path().join("impostor-ran");
    let impostor = dir.path().join("impostor");
    std::fs::write(
        &impostor,
        format!(
            "#!/bin/sh\ntouch {:?}\nexec {:?} \"$@\"\n",
            mark.display().to_string(),
            real.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&impostor, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&impostor, &binary).unwrap();

    let old = server.pid();
    // SAFETY: killing the test's own grandchild.
    unsafe { libc::kill(old as libc::pid_t, libc::SIGKILL) };
    eventually("server restarted", Duration::from_secs(30), async || {
        let pid = server.pid();
        if server.restarts() >= 1 && pid != 0 && pid != old {
            Ok(())
        } else {
            Err((server.restarts(), pid))
        }
    })
    .await;
    assert!(!mark.exists(), "the supervisor ran the tampered binary");
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        genuine,
        "binary not restored"
    );
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

/// The real binary, given each secret key with a value of the wrong type, exits with a
/// configuration error that names the key and never shows the value.
#[test]
fn config_errors_never_print_a_secret_value() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("nats", "user_password"),
        ("nats", "urls"),
        ("admin", "auth_token"),
        ("snapshot.s3", "secret"),
        ("snapshot.s3", "session_token"),
        ("snapshot.webdav", "url"),
        ("snapshot.sftp", "url"),
    ];
    for (section, key) in keys {
        let value = if key == "urls" {
            "\"nats://user:982451653@h:4222\""
        } else {
            "982451653"
        };
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!("db_path = \"/tmp/x.db\"\n[{section}]\n{key} = {value}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_harmonylite"))
            .arg("-config")
            .arg(&path)
            .output()
            .unwrap();
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{section}.{key}: {shown}");
        assert!(
            shown.contains(&format!("line 3: {section}.{key}")),
            "{shown}"
        );
        assert!(!shown.contains("982451653"), "{section}.{key}: {shown}");
    }
}
