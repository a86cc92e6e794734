use super::*;
use crate::store::{AuditCaller, EventKind, RolloutState, TokenRole, Wave, WaveState};
use fleet_protocol::AppName;

fn dev(id: &str) -> DeviceRecord {
    DeviceRecord::new(DeviceId::new(id).unwrap(), 10)
}

#[test]
fn records_survive_reopen_and_ids_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let digest = Digest::of(b"r");
    {
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.next_rollout_id().unwrap(), 1);
        assert_eq!(s.next_rollout_id().unwrap(), 2);
        s.commit(vec![
            Write::Device(dev("a")),
            Write::Device(dev("b")),
            Write::Rollout(RolloutRecord {
                id: 2,
                release_digest: digest.clone(),
                app: AppName::new("app").unwrap(),
                version: "1".into(),
                group: GroupName::new("g").unwrap(),
                state: RolloutState::Running,
                waves: vec![Wave {
                    settled_at: None,
                    gates_waived: false,
                    prom: Default::default(),
                    held: Default::default(),
                    devices: vec![DeviceId::new("a").unwrap()],
                    state: WaveState::Active,
                    started_at: Some(10),
                }],
                previous: Default::default(),
                reverted: Default::default(),
                safety: Default::default(),
                halt_reason: None,
                gate_failure: None,
                pause_reason: None,
                excluded: vec![],
                created_at: 10,
                updated_at: 10,
            }),
            Write::Event(EventRecord {
                seq: 0,
                at: 10,
                kind: EventKind::GroupCreated,
                subject: "a".into(),
                message: "first".into(),
            }),
            Write::Event(EventRecord {
                seq: 0,
                at: 11,
                kind: EventKind::GroupCreated,
                subject: "a".into(),
                message: "second".into(),
            }),
            Write::Token(TokenRecord {
                hash: "h".into(),
                name: "admin".into(),
                role: TokenRole::Admin,
                created_at: 10,
            }),
        ])
        .unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.devices().unwrap().len(), 2);
    assert_eq!(s.rollout(2).unwrap().unwrap().state, RolloutState::Running);
    assert_eq!(s.next_rollout_id().unwrap(), 3);
    let events = s.events(10).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>(),
        ["first", "second"]
    );
    assert!(events[0].seq < events[1].seq);
    assert_eq!(s.events(1).unwrap()[0].message, "second");
    assert_eq!(s.token_count().unwrap(), 1);
    assert!(s.token("h").unwrap().is_some());
    s.commit(vec![Write::DeleteGroup(GroupName::new("none").unwrap())])
        .unwrap();
}

fn audited(path: &str) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: 10,
        caller: AuditCaller::Anonymous,
        who: "anonymous".into(),
        role: None,
        method: "POST".into(),
        route: None,
        path: path.into(),
        peer: None,
        status: 401,
        refusal: Some("no token".into()),
    }
}

#[test]
fn the_audit_log_numbers_pages_and_keeps_only_the_newest_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path()).unwrap().with_audit_retention(3);
        for i in 1..=5 {
            assert_eq!(s.audit_append(audited(&format!("/{i}"))).unwrap(), i);
        }
        let paths = |v: Vec<AuditRecord>| v.into_iter().map(|r| r.path).collect::<Vec<_>>();
        assert_eq!(paths(s.audit(None, 10).unwrap()), ["/3", "/4", "/5"]);
        assert_eq!(paths(s.audit(None, 2).unwrap()), ["/4", "/5"]);
        assert_eq!(paths(s.audit(Some(3), 10).unwrap()), ["/4", "/5"]);
        assert_eq!(paths(s.audit(Some(0), 1).unwrap()), ["/3"]);
        assert!(s.audit(Some(5), 10).unwrap().is_empty());
    }
    // Numbers go on after a restart; the retention still holds.
    let s = SledStore::open(dir.path()).unwrap().with_audit_retention(3);
    assert_eq!(s.audit_append(audited("/6")).unwrap(), 6);
    let seqs: Vec<u64> = s.audit(None, 10).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [4, 5, 6]);
}

#[test]
fn tokens_are_listed_and_revoked_and_a_corrupt_one_hides_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let token = |hash: &str, name: &str| TokenRecord {
        hash: hash.into(),
        name: name.into(),
        role: TokenRole::Viewer,
        created_at: 1,
    };
    s.commit(vec![
        Write::Token(token("h1", "a")),
        Write::Token(token("h2", "b")),
    ])
    .unwrap();
    s.commit(vec![Write::DeleteToken("h1".into())]).unwrap();
    let names: Vec<String> = s.tokens().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["b"]);
    assert!(s.token("h1").unwrap().is_none());
    s.tokens
        .insert("secrethash", b"not json".as_slice())
        .unwrap();
    let e = s.token("secrethash").unwrap_err().to_string();
    assert!(!e.contains("secrethash"), "{e}");
    let e = s.tokens().unwrap_err().to_string();
    assert!(!e.contains("secrethash"), "{e}");
}

#[test]
fn enrollment_records_survive_reopen_and_a_corrupt_token_hides_its_hash() {
    use crate::store::{IssuedSerial, PendingEnrollment, RevokedDevice};
    let dir = tempfile::tempdir().unwrap();
    let cam = DeviceId::new("cam-01").unwrap();
    let token = EnrollTokenRecord {
        id: "0123456789abcdef".into(),
        secret_sha256: "0123456789abcdef".repeat(4),
        group: GroupName::new("cameras").unwrap(),
        uses: 2,
        used: 1,
        expires_at: 100,
        approve: true,
        reenroll: false,
        created_at: 1,
        revoked: false,
    };
    let pending = PendingEnrollment {
        device: cam.clone(),
        csr: "csr".into(),
        key_sha256: "k".into(),
        token_id: token.id.clone(),
        requested_at: 2,
        peer: Some("127.0.0.1".into()),
        approved: false,
    };
    let cert = DeviceCertRecord {
        device: cam.clone(),
        key_sha256: "k".into(),
        issued: vec![IssuedSerial {
            serial: "41".into(),
            not_before: 1,
            not_after: 50,
        }],
        token_id: token.id.clone(),
        enrolled_at: 2,
        renewed_at: None,
    };
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.commit(vec![
            Write::EnrollToken(token.clone()),
            Write::Pending(pending.clone()),
            Write::DeviceCert(cert.clone()),
            Write::Revoke(RevokedDevice {
                device: cam.clone(),
                revoked_at: 3,
                serials: vec!["41".into()],
            }),
        ])
        .unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        s.enroll_token(&token.secret_sha256).unwrap(),
        Some(token.clone())
    );
    assert_eq!(s.enroll_tokens().unwrap(), vec![token.clone()]);
    assert_eq!(s.pending(&cam).unwrap(), Some(pending));
    assert_eq!(s.pendings().unwrap().len(), 1);
    assert_eq!(s.device_cert(&cam).unwrap(), Some(cert));
    assert_eq!(s.revoked(&cam).unwrap().unwrap().serials, ["41"]);
    assert_eq!(s.revoked_all().unwrap().len(), 1);
    s.commit(vec![Write::DeletePending(cam.clone())]).unwrap();
    assert!(s.pending(&cam).unwrap().is_none());

    s.enroll_tokens
        .insert("secrethash", b"not json".as_slice())
        .unwrap();
    let e = s.enroll_token("secrethash").unwrap_err().to_string();
    assert!(!e.contains("secrethash"), "{e}");
    let e = s.enroll_tokens().unwrap_err().to_string();
    assert!(!e.contains("secrethash"), "{e}");
}
