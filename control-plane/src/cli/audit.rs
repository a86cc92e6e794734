//! `fleetctl audit`: the server's audit log (admin only): every call that
//! may change something, and every refused call, with who made it.

use clap::Args;

use super::{CliError, Output, Remote, print_json, render};
use crate::store::{AuditCaller, AuditRecord};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many records: the newest N (or the first N after --after).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only records after this sequence number (to page forward).
    #[arg(long)]
    pub after: Option<u64>,
    #[command(flatten)]
    pub remote: Remote,
}

pub async fn run(args: AuditArgs) -> Result<(), CliError> {
    let remote = &args.remote;
    let records = remote
        .client()?
        .audit(args.limit, args.after)
        .await
        .map_err(|source| CliError::Server {
            doing: "cannot read the audit log".into(),
            source,
        })?;
    match remote.output {
        Output::Json => print_json(&records),
        Output::Text => {
            print!("{}", table(&records));
            Ok(())
        }
    }
}

/// Who made a call, as the table shows it: `ci (operator)`,
/// `device cam-01`, `anonymous`.
fn who(r: &AuditRecord) -> String {
    match (r.caller, r.role) {
        (AuditCaller::Operator, Some(role)) => format!("{} ({role})", r.who),
        (AuditCaller::Operator, None) => r.who.clone(),
        (AuditCaller::Device, _) => format!("device {}", r.who),
        (AuditCaller::Anonymous, _) => "anonymous".into(),
    }
}

/// The `fleetctl audit` table, oldest first. Times are UTC.
pub fn table(records: &[AuditRecord]) -> String {
    let mut out = format!(
        "{:>6} {:<19} {:<24} {:<6} {:<36} {:>6} {:<21} REFUSED\n",
        "SEQ", "TIME", "WHO", "METHOD", "PATH", "STATUS", "FROM"
    );
    for r in records {
        out.push_str(&format!(
            "{:>6} {:<19} {:<24} {:<6} {:<36} {:>6} {:<21} {}\n",
            r.seq,
            render::utc(r.at),
            who(r),
            r.method,
            r.path,
            r.status,
            r.peer.map_or("-".to_owned(), |p| p.to_string()),
            r.refusal.as_deref().unwrap_or("-"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenRole;

    #[test]
    fn the_table_names_who_called_from_where_and_why_it_was_refused() {
        let record = AuditRecord {
            seq: 7,
            at: 0,
            caller: AuditCaller::Operator,
            who: "ci".into(),
            role: Some(TokenRole::Viewer),
            method: "POST".into(),
            route: Some("/api/v1/groups".into()),
            path: "/api/v1/groups".into(),
            peer: Some("127.0.0.1:5000".parse().unwrap()),
            status: 403,
            refusal: Some("needs the admin role, token has viewer".into()),
        };
        let text = table(&[record]);
        let line = text.lines().nth(1).unwrap();
        for part in [
            "7",
            "1970-01-01 00:00:00",
            "ci (viewer)",
            "POST",
            "/api/v1/groups",
            "403",
            "127.0.0.1:5000",
            "needs the admin role",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }
}
