//! `fleetctl enroll`: bootstrap tokens and enrollments waiting for approval
//! (protocol/SECURITY.md). Admin commands.

use clap::{Args, Subcommand};
use fleet_protocol::{DeviceId, GroupName};

use super::{CliError, Output, Remote, print_json, render};
use crate::enroll::admin::{CreateEnrollToken, EnrollTokenView, PendingView};

#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[command(subcommand)]
    pub command: EnrollCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum EnrollCommand {
    /// Make a bootstrap token (printed once) for devices joining a group:
    /// `fleet-agent enroll --server URL --token TOKEN` on each device.
    Create {
        /// The group every device enrolled with the token joins.
        #[arg(long)]
        group: GroupName,
        /// How many devices it may enroll.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid: a number with s, m, h or d (e.g. 24h).
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        expires: u64,
        /// Enrollments wait for `fleetctl enroll approve DEVICE`.
        #[arg(long)]
        approve: bool,
        /// A device id enrolled already under another key may enroll again
        /// (a device offline past its certificate's expiry, a replaced one).
        #[arg(long)]
        reenroll: bool,
    },
    /// List tokens (never their secrets).
    #[command(alias = "ls")]
    List,
    /// Revoke a token: it enrolls no device from now on.
    Revoke {
        /// The token's id, as `fleetctl enroll list` shows it.
        id: String,
    },
    /// Enrollments waiting for approval.
    Pending,
    /// Approve a waiting enrollment (compare the key hash with the one the
    /// device shows).
    Approve { device: DeviceId },
    /// Reject a waiting enrollment.
    Reject { device: DeviceId },
}

/// `30s`, `15m`, `24h`, `7d` (or plain seconds) as seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is no duration: give a number with s, m, h or d (e.g. 24h)"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unit {other:?} in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn server(doing: String) -> impl FnOnce(crate::client::ClientError) -> CliError {
    move |source| CliError::Server { doing, source }
}

pub async fn run(args: EnrollArgs) -> Result<(), CliError> {
    let remote = &args.remote;
    let client = remote.client()?;
    match args.command {
        EnrollCommand::Create {
            group,
            uses,
            expires,
            approve,
            reenroll,
        } => {
            let req = CreateEnrollToken {
                group: group.clone(),
                uses,
                expires_in_secs: expires,
                approve,
                reenroll,
            };
            let made = client
                .create_enroll_token(&req)
                .await
                .map_err(server(format!("cannot make a token for group {group}")))?;
            match remote.output {
                Output::Json => print_json(&made),
                Output::Text => {
                    eprintln!(
                        "token {} for group {}: {} use(s), expires {}{} (shown once; keep it secret)",
                        made.view.id,
                        made.view.group,
                        made.view.uses,
                        render::utc(made.view.expires_at),
                        if made.view.approve {
                            ", enrollments wait for `fleetctl enroll approve`"
                        } else {
                            ""
                        }
                    );
                    println!("{}", made.token);
                    Ok(())
                }
            }
        }
        EnrollCommand::List => {
            let all = client
                .enroll_tokens()
                .await
                .map_err(server("cannot list tokens".into()))?;
            show(remote.output, &all, |v| tokens(v))
        }
        EnrollCommand::Revoke { id } => {
            let t = client
                .revoke_enroll_token(&id)
                .await
                .map_err(server(format!("cannot revoke token {id}")))?;
            show(remote.output, &t, |t| format!("token {} revoked\n", t.id))
        }
        EnrollCommand::Pending => {
            let all = client
                .enroll_pending()
                .await
                .map_err(server("cannot list pending enrollments".into()))?;
            show(remote.output, &all, |v| pending(v))
        }
        EnrollCommand::Approve { device } => decide(remote, &client, device, true).await,
        EnrollCommand::Reject { device } => decide(remote, &client, device, false).await,
    }
}

fn show<T: serde::Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    match output {
        Output::Json => print_json(value),
        Output::Text => {
            print!("{}", text(value));
            Ok(())
        }
    }
}

async fn decide(
    remote: &Remote,
    client: &crate::client::Client,
    device: DeviceId,
    approve: bool,
) -> Result<(), CliError> {
    let verb = if approve { "approve" } else { "reject" };
    let p = client
        .decide_enrollment(&device, approve)
        .await
        .map_err(server(format!("cannot {verb} the enrollment of {device}")))?;
    show(remote.output, &p, |p| {
        format!(
            "enrollment of {} {verb}d (key sha256 {}){}\n",
            p.device,
            p.key_sha256,
            if approve {
                "; the device gets its certificate at its next try"
            } else {
                ""
            }
        )
    })
}

fn tokens(all: &[EnrollTokenView]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:>9} {:<20} {:<9} {:<8} STATE\n",
        "ID", "GROUP", "USED", "EXPIRES", "APPROVAL", "REENROLL"
    );
    for t in all {
        out.push_str(&format!(
            "{:<16} {:<16} {:>9} {:<20} {:<9} {:<8} {}\n",
            t.id,
            t.group,
            format!("{}/{}", t.used, t.uses),
            render::utc(t.expires_at),
            if t.approve { "yes" } else { "no" },
            if t.reenroll { "yes" } else { "no" },
            t.state,
        ));
    }
    out
}

fn pending(all: &[PendingView]) -> String {
    let mut out = format!(
        "{:<24} {:<20} {:<16} {:<9} {:<40} KEY SHA256\n",
        "DEVICE", "REQUESTED", "TOKEN", "APPROVED", "FROM"
    );
    for p in all {
        out.push_str(&format!(
            "{:<24} {:<20} {:<16} {:<9} {:<40} {}\n",
            p.device,
            render::utc(p.requested_at),
            p.token_id,
            if p.approved { "yes" } else { "no" },
            p.peer.as_deref().unwrap_or("-"),
            p.key_sha256,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_and_refuse_others() {
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        for bad in ["", "h", "1w", "1.5h", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
