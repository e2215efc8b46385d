//! Tests of `signing`: key ids, the canonical MAC input, signing, rotation and every refusal.

use super::*;

const OLD: &str = "old-key-0123456789abcdef0123456789abcdef";
const NEW: &str = "new-key-0123456789abcdef0123456789abcdef";

fn keys(list: &[&str]) -> Keys {
    Keys::new(&KeyList::new(list.iter().map(|k| k.to_string()).collect()))
}

/// `manifest::tests::sample`, with a second stream (the MAC must cover every entry).
fn manifest() -> Manifest {
    let mut m = crate::snapshot::manifest::tests::sample();
    m.sequences.insert("harmonylite-changes-1".to_owned(), 7);
    m
}

#[test]
fn key_ids_are_short_stable_and_reveal_nothing_plain() {
    let id = key_id(NEW.as_bytes());
    assert_eq!(id.len(), 8);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(id, key_id(NEW.as_bytes()));
    assert_ne!(id, key_id(OLD.as_bytes()));
    // Not the plain SHA-256 of the key: a digest published elsewhere does not name it.
    let plain = hex::encode(Sha256::digest(NEW.as_bytes()));
    assert!(!plain.starts_with(&id));
    let k = keys(&[NEW, OLD]);
    assert_eq!(k.ids(), [key_id(NEW.as_bytes()), key_id(OLD.as_bytes())]);
    let debug = format!("{k:?}");
    assert!(!debug.contains("0123456789abcdef"), "{debug}");
}

#[test]
fn a_signed_manifest_verifies_after_a_round_trip_through_json() {
    let k = keys(&[NEW]);
    let signed = k.sign(manifest());
    let sig = signed.signature.clone().unwrap();
    assert!(
        sig.starts_with(&format!("hmac-sha256:{}:", key_id(NEW.as_bytes()))),
        "{sig}"
    );
    assert_eq!(sig.len(), "hmac-sha256:".len() + 8 + 1 + 64);
    let parsed = Manifest::parse(&signed.to_json()).unwrap();
    assert_eq!(parsed, signed);
    assert_eq!(k.verify(&parsed), Ok(Some(key_id(NEW.as_bytes()))));
    // Compact JSON with the fields in another order: the MAC does not cover the text.
    let value: serde_json::Value = serde_json::from_slice(&signed.to_json()).unwrap();
    let compact = serde_json::to_vec(&value).unwrap();
    assert_ne!(compact, signed.to_json());
    assert_eq!(
        k.verify(&Manifest::parse(&compact).unwrap()),
        Ok(Some(key_id(NEW.as_bytes())))
    );
    // Signing twice gives the same signature (nothing random, old signature not covered).
    assert_eq!(k.sign(signed.clone()), signed);
}

#[test]
fn changing_any_field_breaks_the_signature() {
    type Spoil = fn(&mut Manifest);
    let spoilers: [(&str, Spoil); 12] = [
        ("format", |m| m.format += 1),
        ("id", |m| m.id.push('0')),
        ("node_id", |m| m.node_id += 1),
        ("created_ms", |m| m.created_ms += 1),
        ("size", |m| m.size += 1),
        ("raw_size", |m| m.raw_size -= 1),
        ("sha256", |m| m.sha256 = "ac".repeat(32)),
        ("schema_hash", |m| m.schema_hash = "ce".repeat(32)),
        ("sequences value", |m| {
            m.sequences.insert("harmonylite-changes-0".into(), 43);
        }),
        ("sequences added", |m| {
            m.sequences.insert("harmonylite-changes-2".into(), 1);
        }),
        ("sequences removed", |m| {
            m.sequences.remove("harmonylite-changes-1");
        }),
        ("harmonylite_version", |m| {
            m.harmonylite_version = "9.9.9".into()
        }),
    ];
    let k = keys(&[NEW]);
    let signed = k.sign(manifest());
    let id = key_id(NEW.as_bytes());
    for (field, spoil) in spoilers {
        let mut m = signed.clone();
        spoil(&mut m);
        assert_eq!(
            k.verify(&m),
            Err(SignatureError::Mismatch { key_id: id.clone() }),
            "{field}"
        );
    }
}

#[test]
fn the_canonical_form_is_unambiguous() {
    // Bytes moved between neighbouring strings change the input.
    let mut a = manifest();
    a.sequences = [("ab".to_owned(), 1)].into();
    a.harmonylite_version = "c".into();
    let mut b = a.clone();
    b.sequences = [("a".to_owned(), 1)].into();
    b.harmonylite_version = "bc".into();
    assert_ne!(canonical(&a), canonical(&b));
    // The signature is not part of it.
    let mut c = a.clone();
    c.signature = Some("anything".into());
    assert_eq!(canonical(&a), canonical(&c));
    assert!(canonical(&a).starts_with(MAC_DOMAIN));
}

#[test]
fn unsigned_malformed_and_unknown_key_are_refused() {
    let k = keys(&[NEW]);
    assert_eq!(k.verify(&manifest()), Err(SignatureError::Unsigned));
    let good = k.sign(manifest()).signature.unwrap();
    let malformed = [
        String::new(),
        good.replacen("hmac-sha256", "hmac-sha512", 1),
        good.to_uppercase(),
        good[..good.len() - 1].to_owned(),
        format!("{good}0"),
        good.replacen(':', "", 1),
        "hmac-sha256:zzzzzzzz:".to_owned() + &"00".repeat(32),
    ];
    for sig in malformed {
        let mut m = manifest();
        m.signature = Some(sig.clone());
        assert_eq!(k.verify(&m), Err(SignatureError::Malformed), "{sig}");
    }
    let by_old = keys(&[OLD]).sign(manifest());
    assert_eq!(
        k.verify(&by_old),
        Err(SignatureError::UnknownKey {
            key_id: key_id(OLD.as_bytes())
        })
    );
    // A forger who knows a key id but not the key: the id is right, the MAC is not.
    let mut forged = manifest();
    forged.signature = Some(format!(
        "hmac-sha256:{}:{}",
        key_id(NEW.as_bytes()),
        "00".repeat(32)
    ));
    assert!(matches!(
        k.verify(&forged),
        Err(SignatureError::Mismatch { .. })
    ));
    let kinds: Vec<&str> = [
        SignatureError::Unsigned,
        SignatureError::Malformed,
        SignatureError::UnknownKey { key_id: "x".into() },
        SignatureError::Mismatch { key_id: "x".into() },
    ]
    .iter()
    .map(SignatureError::kind)
    .collect();
    assert_eq!(kinds, ["unsigned", "malformed", "unknown_key", "mismatch"]);
}

#[test]
fn rotation_accepts_the_old_key_until_it_is_dropped() {
    let before = keys(&[OLD]);
    let during = keys(&[NEW, OLD]);
    let after = keys(&[NEW]);
    let old_snapshot = before.sign(manifest());
    let new_snapshot = during.sign(manifest());
    assert!(
        new_snapshot
            .signature
            .as_ref()
            .unwrap()
            .contains(&key_id(NEW.as_bytes()))
    );
    assert_eq!(
        during.verify(&old_snapshot),
        Ok(Some(key_id(OLD.as_bytes())))
    );
    assert_eq!(
        during.verify(&new_snapshot),
        Ok(Some(key_id(NEW.as_bytes())))
    );
    assert_eq!(
        after.verify(&new_snapshot),
        Ok(Some(key_id(NEW.as_bytes())))
    );
    assert!(matches!(
        after.verify(&old_snapshot),
        Err(SignatureError::UnknownKey { .. })
    ));
    // A node not yet given the new key refuses what the rotated signer writes.
    assert!(matches!(
        before.verify(&new_snapshot),
        Err(SignatureError::UnknownKey { .. })
    ));
}

#[test]
fn without_keys_nothing_is_signed_or_checked() {
    let none = Keys::default();
    assert!(!none.enabled());
    let m = none.sign(manifest());
    assert_eq!(m.signature, None);
    assert_eq!(none.verify(&m), Ok(None));
    assert_eq!(none.verify(&keys(&[NEW]).sign(manifest())), Ok(None));
    // An unsigned manifest is written exactly as before: older builds refuse unknown fields.
    let json = String::from_utf8(m.to_json()).unwrap();
    assert!(!json.contains("signature"), "{json}");
}

#[test]
fn only_stores_beyond_the_cluster_warn_when_unsigned() {
    use crate::config::{Config, SnapshotStore};
    let mut cfg = Config::default();
    for (store, warns) in [
        (SnapshotStore::Nats, false),
        (SnapshotStore::Fs, false),
        (SnapshotStore::S3, true),
        (SnapshotStore::Webdav, true),
        (SnapshotStore::Sftp, true),
    ] {
        cfg.snapshot.store = store;
        let warning = unsigned_store_warning(&cfg);
        assert_eq!(warning.is_some(), warns, "{store:?}");
        if let Some(w) = warning {
            assert!(w.contains("snapshot.signing_key"), "{w}");
        }
    }
    cfg.snapshot.signing_key_file = "/etc/harmonylite/snapshot-keys".into();
    assert_eq!(unsigned_store_warning(&cfg), None);
    cfg.snapshot.signing_key_file.clear();
    cfg.snapshot.signing_key = Secret::new(KeyList::new(vec![NEW.into()]));
    assert_eq!(unsigned_store_warning(&cfg), None);
    cfg.snapshot.signing_key = Secret::default();
    cfg.snapshot.enabled = false;
    assert_eq!(unsigned_store_warning(&cfg), None);
}
