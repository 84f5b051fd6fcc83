//! `demo-traffic`: the demo's merchant. Signs on and walks through the interesting cases
//! one request at a time, printing a line per step: an approval, two bank declines, a
//! bank timeout (answered 91, reversed at the bank), a retransmission of the approval
//! (same DE37/DE38), and an echo. With `--smoke` only the sign-on, the approval and the
//! echo: `scripts/deploy.sh` proves a fresh installation with it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use codec::{MacCheck, OwnedMessage, builtin};
use loadtest::load::http;
use loadtest::load::run::wait_links_ready;
use loadtest::merchant::{
    self, Answer, Client, Merchant, PurchaseSpec, call, network_code, repeat_of,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long one step waits for its answer (the timeout step waits for the bank timeout).
const STEP_WAIT: Duration = Duration::from_secs(30);
const TERMINAL: &str = "DEMO0001";
const EXPIRY: &str = "3012";
const CURRENCY: &str = "840";

#[derive(Debug, Parser)]
#[command(
    name = "demo-traffic",
    version,
    about = "Walks a merchant through the demo cases"
)]
struct Args {
    /// The switch's merchant listener.
    #[arg(long)]
    addr: SocketAddr,
    /// The merchant id (DE42).
    #[arg(long)]
    merchant: String,
    /// The merchant's MAC key in hex.
    #[arg(long)]
    key: String,
    /// Skip waiting for the switch's bank links (a probe purchase per bank).
    #[arg(long)]
    no_wait: bool,
    /// Control endpoints of the bank simulators: after the scenario, wait until the
    /// reversal of the timed-out purchase is recorded and print what each recorded.
    #[arg(long)]
    bank_control: Vec<SocketAddr>,
    /// Smoke test of a deployment: only the sign-on, one approved purchase and an echo
    /// (each must be answered 00); exits non-zero otherwise.
    #[arg(long)]
    smoke: bool,
}

/// How long to wait for the reversal of the timed-out purchase to reach the bank.
const REVERSAL_WAIT: Duration = Duration::from_secs(60);
const REVERSAL_POLL: Duration = Duration::from_millis(500);

async fn record(control: SocketAddr) -> Result<serde_json::Value> {
    let body = http::request(control, "GET", "/record").await?;
    Ok(serde_json::from_str(&body)?)
}

/// Polls every simulator until one records a reversal of `rrn`, within [`REVERSAL_WAIT`].
async fn wait_reversal(controls: &[SocketAddr], rrn: &str) -> Result<()> {
    let start = tokio::time::Instant::now();
    loop {
        for c in controls {
            if record(*c).await?["reversals"].get(rrn).is_some() {
                println!(
                    "{:<16} the bank simulator recorded the reversal of {rrn} after {:.1?}",
                    "reversal",
                    start.elapsed()
                );
                return Ok(());
            }
        }
        if start.elapsed() >= REVERSAL_WAIT {
            bail!("no reversal of {rrn} at the bank after {REVERSAL_WAIT:?}");
        }
        tokio::time::sleep(REVERSAL_POLL).await;
    }
}

fn summarise(name: &str, r: &serde_json::Value) {
    let list = |k: &str| r[k].as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
    println!("bank {name}:");
    for a in list("approved") {
        println!(
            "  approved  {} RRN {} amount {} auth {}{}",
            text(&a, "mti"),
            text(&a, "rrn"),
            a["amount_minor"],
            text(&a, "auth_code"),
            if a["reversed"] == true {
                "  REVERSED"
            } else {
                ""
            }
        );
    }
    for d in list("declined") {
        println!(
            "  declined  {} RRN {} amount {} code {}",
            text(&d, "mti"),
            text(&d, "rrn"),
            d["amount_minor"],
            text(&d, "response_code")
        );
    }
    for u in list("unanswered") {
        println!(
            "  withheld  {} RRN {} amount {} (never answered, as the 91 rule says)",
            text(&u, "mti"),
            text(&u, "rrn"),
            u["amount_minor"]
        );
    }
    if let Some(revs) = r["reversals"].as_object() {
        for (rrn, n) in revs {
            println!("  reversal  RRN {rrn} received {n} time(s)");
        }
    }
    println!(
        "  messages by MTI: {}  repeated RRNs: {}",
        r["counts_by_mti"], r["requests_by_rrn_dupes"]
    );
}

struct Demo {
    m: Merchant,
    client: Client<()>,
    rx: UnboundedReceiver<Answer<()>>,
    stan: u32,
    run: u64,
}

impl Demo {
    async fn send(&mut self, msg: &OwnedMessage) -> Result<Answer<()>> {
        let a = call(
            &self.client,
            &mut self.rx,
            msg,
            Some(&self.m.key),
            STEP_WAIT,
        )
        .await
        .context("no answer from the switch")?;
        if a.message.check_mac(&self.m.key) != MacCheck::Valid {
            bail!("the answer's MAC does not verify");
        }
        Ok(a)
    }

    fn purchase(&mut self, pan: &str, amount_minor: u64) -> OwnedMessage {
        self.stan += 1;
        let spec = PurchaseSpec {
            stan: self.stan,
            de7: merchant::de7_now(),
            terminal: TERMINAL.into(),
            pan: pan.into(),
            amount_minor,
            expiry: EXPIRY.into(),
            order: format!("DEMO-{}-{}", self.run, self.stan),
            currency: CURRENCY.into(),
        };
        merchant::purchase(&self.m.id, &spec)
    }

    fn network(&mut self, code: &str) -> OwnedMessage {
        self.stan += 1;
        merchant::network(&self.m.id, TERMINAL, self.stan, code)
    }
}

fn field(a: &Answer<()>, n: u8) -> String {
    a.message
        .get_str(n)
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|| "-".into())
}

fn line(step: &str, what: &str, a: &Answer<()>) {
    println!(
        "{step:<16} {what:<44} -> {} DE39={} DE37={} DE38={} ({:.1?})",
        a.message.mti(),
        field(a, 39),
        field(a, 37),
        field(a, 38),
        a.latency()
    );
}

fn expect(step: &str, a: &Answer<()>, code: &str) -> Result<()> {
    let got = field(a, 39);
    if got != code {
        bail!("{step}: expected DE39 {code}, got {got}");
    }
    Ok(())
}

/// A network echo (0800 DE70=301), which must be answered 00.
async fn echo(d: &mut Demo) -> Result<()> {
    let msg = d.network(network_code::ECHO);
    let a = d.send(&msg).await?;
    line("echo", "0800 DE70=301", &a);
    expect("echo", &a, "00")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    loadtest::cli::exit("demo-traffic", try_main().await)
}

async fn try_main() -> Result<()> {
    let args = Args::parse();
    let m = Merchant::new(&args.merchant, &args.key).context("--key is not 64 hex digits")?;
    if !args.no_wait {
        println!("waiting for the switch's bank links (a probe purchase per bank) ...");
        wait_links_ready(args.addr, &m).await?;
    }
    let (client, rx) = Client::<()>::connect(args.addr, builtin::merchant()).await?;
    let mut d = Demo {
        m,
        client,
        rx,
        stan: 0,
        run: codec::clock::unix_now(),
    };

    let msg = d.network(network_code::SIGN_ON);
    let a = d.send(&msg).await?;
    line("sign-on", "0800 DE70=001", &a);
    expect("sign-on", &a, "00")?;

    let approval = d.purchase("4111111111111111", 1000);
    let a = d.send(&approval).await?;
    line("approval", "0200 4111...1111 10.00 USD", &a);
    expect("approval", &a, "00")?;
    if args.smoke {
        echo(&mut d).await?;
        println!("smoke test passed");
        return Ok(());
    }
    let (rrn, auth) = (field(&a, 37), field(&a, 38));

    let msg = d.purchase("4111111111111111", 1051);
    let a = d.send(&msg).await?;
    line(
        "decline 51",
        "0200 4111...1111 10.51 (insufficient funds)",
        &a,
    );
    expect("decline 51", &a, "51")?;

    let msg = d.purchase("5500000000000004", 1005);
    let a = d.send(&msg).await?;
    line("decline 05", "0200 5500...0004 10.05 (do not honour)", &a);
    expect("decline 05", &a, "05")?;

    let msg = d.purchase("4111111111111111", 1091);
    println!(
        "{:<16} {:<44}    (the bank never answers; wait for the switch's bank timeout)",
        "timeout", "0200 4111...1111 10.91"
    );
    let a = d.send(&msg).await?;
    line("timeout", "0200 4111...1111 10.91 (bank silent)", &a);
    expect("timeout", &a, "91")?;
    let timeout_rrn = field(&a, 37);
    println!(
        "{:<16} the switch now reverses RRN {timeout_rrn} at the bank (0400, repeated until answered)",
        ""
    );

    let repeat = repeat_of(&approval);
    let a = d.send(&repeat).await?;
    line(
        "retransmission",
        "0201 of the approval (same DE7, DE11)",
        &a,
    );
    expect("retransmission", &a, "00")?;
    if field(&a, 37) != rrn || field(&a, 38) != auth {
        bail!(
            "retransmission: expected DE37={rrn} DE38={auth}, got DE37={} DE38={}",
            field(&a, 37),
            field(&a, 38)
        );
    }
    println!(
        "{:<16} same DE37 and DE38 as the original: answered from the record, not sent to the bank again",
        ""
    );

    echo(&mut d).await?;
    if !args.bank_control.is_empty() {
        println!();
        wait_reversal(&args.bank_control, &timeout_rrn).await?;
        println!();
        println!("what the bank simulators recorded (including the link probes):");
        for (i, c) in args.bank_control.iter().enumerate() {
            summarise(
                &format!("{} ({c})", ["bank-a", "bank-b"].get(i).unwrap_or(&"?")),
                &record(*c).await?,
            );
        }
    }
    println!("demo traffic done");
    Ok(())
}
