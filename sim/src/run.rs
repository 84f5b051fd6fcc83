//! One seeded run: the world, its traffic and its faults, quiescence, the invariants.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switch::mem::{FaultPlan, WriteFault};
use switch::store::{State, Store};

use crate::dice::Dice;
use crate::merchant::{Book, Terminal, acknowledge};
use crate::world::World;

/// The size of a run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub merchants: u32,
    pub terminals: u32,
    /// Operations per terminal.
    pub ops: u32,
    /// Faults on (off: a fair-weather run).
    pub faults: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            merchants: 3,
            terminals: 3,
            ops: 8,
            faults: true,
        }
    }
}

/// What a run came to.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    /// Broken invariants (empty: passed).
    pub violations: Vec<String>,
    /// A digest of every answer merchants got, with its virtual time: equal for equal
    /// seeds.
    pub digest: u64,
    pub requests: usize,
    pub crashes: u32,
    /// Virtual seconds until quiescence.
    pub virtual_s: u64,
    /// Answers merchants got, by DE39 (`-` for none yet).
    pub answers: std::collections::BTreeMap<String, u64>,
    /// RRNs the banks received.
    pub bank_rrns: usize,
}

thread_local! {
    /// Panics of the run in progress on this thread.
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Longest wait for quiescence once traffic and faults have stopped (virtual).
pub const QUIESCENCE_MAX_S: u64 = 3_600;

/// Runs seed `seed` to quiescence and checks it.
pub fn run_seed(seed: u64, opts: &Options) -> Report {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // A panic in any task of the run (they all run on this thread) breaks it.
        std::panic::set_hook(Box::new(|info| {
            PANICS.with(|p| p.borrow_mut().push(info.to_string()));
        }));
    });
    PANICS.with(|p| p.borrow_mut().clear());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(run_async(seed, *opts))
}

async fn run_async(seed: u64, opts: Options) -> Report {
    let dice = Dice::new(seed);
    let merchants: Vec<(String, String)> = (0..opts.merchants)
        .map(|m| {
            (
                format!("M{m:03}"),
                hex::encode([m as u8 + 1; codec::mac::MAC_KEY_LEN_BYTES]),
            )
        })
        .collect();
    let (world, inboxes) = World::new(dice.fork(3), &merchants);
    let book = Arc::new(Book::default());
    let started = world.clock.unix_s();
    world.start().await;
    let ackers: Vec<_> = merchants
        .iter()
        .zip(inboxes)
        .map(|((_, key), inbox)| {
            let key = codec::MacKey::from_hex(key).expect("hex");
            tokio::spawn(acknowledge(world.clone(), book.clone(), key, inbox))
        })
        .collect();
    let reversible = Arc::new(Mutex::new(Vec::new()));
    let terminals = open_terminals(&world, &book, &dice, &merchants, &opts, &reversible);
    let traffic_done = Arc::new(tokio::sync::Notify::new());
    let chaos = tokio::spawn(chaos(
        world.clone(),
        dice.fork(4),
        opts.faults,
        reversible,
        traffic_done.clone(),
    ));
    for t in terminals {
        let _ = t.await;
    }
    traffic_done.notify_one();
    let crashes = chaos.await.unwrap_or(0);
    heal(&world).await;
    let settled = quiesce(&world).await;
    let violations = verdict(&world, &book, settled).await;
    world.crash();
    for a in ackers {
        a.abort();
    }
    report(seed, &world, &book, violations, crashes, started)
}

/// Starts every terminal's working day.
fn open_terminals(
    world: &Arc<World>,
    book: &Arc<Book>,
    dice: &Dice,
    merchants: &[(String, String)],
    opts: &Options,
    reversible: &Arc<Mutex<Vec<(usize, String)>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut terminals = Vec::new();
    for (m, (id, key)) in merchants.iter().enumerate() {
        for t in 0..opts.terminals {
            let terminal = Terminal {
                world: world.clone(),
                book: book.clone(),
                dice: dice.fork(100 + (m as u64) * 100 + u64::from(t)),
                merchant: id.clone(),
                key: codec::MacKey::from_hex(key).expect("hex"),
                terminal: format!("T{t:07}"),
                stan: 0,
                orders: 0,
                reversible: reversible.clone(),
            };
            terminals.push(tokio::spawn(terminal.run(opts.ops)));
        }
    }
    terminals
}

/// The invariants, the run's panics, and whether it settled.
async fn verdict(world: &World, book: &Book, settled: bool) -> Vec<String> {
    let mut violations = crate::check::invariants(world, book).await;
    for p in PANICS.with(|p| p.borrow().clone()).into_iter().take(3) {
        violations.push(format!("no-panics: {}", p.replace('\n', " ")));
    }
    if !settled {
        violations.insert(
            0,
            "quiescence: the switch did not settle within the limit".into(),
        );
    }
    violations
}

fn report(
    seed: u64,
    world: &World,
    book: &Book,
    violations: Vec<String>,
    crashes: u32,
    started_s: u64,
) -> Report {
    let mut h = std::hash::DefaultHasher::new();
    book.trace
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .hash(&mut h);
    let mut answers = std::collections::BTreeMap::new();
    for r in book.all() {
        for (rc, _) in &r.answers {
            *answers.entry(rc.clone()).or_insert(0) += 1;
        }
    }
    Report {
        answers,
        bank_rrns: world.banks.iter().map(|b| b.charges().len()).sum(),
        seed,
        violations,
        digest: h.finish(),
        requests: book.all().len(),
        crashes,
        virtual_s: world.clock.unix_s() - started_s,
    }
}

/// Faults until traffic ends: crashes and restarts, Redis flushed or away, store writes
/// failing or losing their acknowledgements, bank links down, bad bank weather, charges
/// the banks reverse on their own. Returns the number of crashes.
async fn chaos(
    world: Arc<World>,
    dice: Dice,
    faults: bool,
    reversible: Arc<Mutex<Vec<(usize, String)>>>,
    done: Arc<tokio::sync::Notify>,
) -> u32 {
    let mut crashes = 0;
    let mut advices = tokio::task::JoinSet::new();
    loop {
        let pause = Duration::from_millis(dice.between(500, 6_000));
        tokio::select! {
            biased;
            _ = done.notified() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        if !faults {
            continue;
        }
        match dice.below(100) {
            0..10 => {
                world.crash();
                crashes += 1;
                tokio::time::sleep(Duration::from_millis(dice.between(100, 5_000))).await;
                world.start().await;
            }
            10..18 => world.claims.flush(),
            18..26 => {
                world.claims.set_reachable(false);
                tokio::time::sleep(Duration::from_millis(dice.between(100, 4_000))).await;
                world.claims.set_reachable(true);
            }
            26..40 => {
                // Mostly a flaky database, at times one that is away altogether.
                let outage = dice.chance(300);
                let plan = store_faults(dice.fork(crashes.into()), outage);
                world.store.set_faults(Some(plan));
                tokio::time::sleep(Duration::from_millis(dice.between(100, 8_000))).await;
                world.store.set_faults(None);
            }
            40..50 => {
                let b = &world.banks[dice.below(world.banks.len() as u64) as usize];
                b.set_link(false);
                tokio::time::sleep(Duration::from_millis(dice.between(100, 4_000))).await;
                b.set_link(true);
            }
            50..75 => {
                for b in &world.banks {
                    b.set_stormy(dice.chance(500));
                }
            }
            75..85 => {
                let picked = {
                    let mut r = reversible.lock().unwrap_or_else(|p| p.into_inner());
                    let n = r.len() as u64;
                    (n > 0).then(|| r.remove(dice.below(n) as usize))
                };
                if let Some((_, rrn)) = picked {
                    advices.spawn(bank_advice(world.clone(), dice.fork(rrn.len() as u64), rrn));
                }
            }
            _ => {}
        }
    }
    while advices.join_next().await.is_some() {}
    crashes
}

/// Store faults while they last: a tenth of writes fail and a tenth lose their
/// acknowledgement; in an `outage` every write fails or loses its acknowledgement.
fn store_faults(dice: Dice, outage: bool) -> FaultPlan {
    Box::new(move |_what| match dice.below(10) {
        0 => WriteFault::Fail,
        1 => WriteFault::LoseAck,
        _ if outage && dice.chance(900) => WriteFault::Fail,
        _ if outage => WriteFault::LoseAck,
        _ => WriteFault::None,
    })
}

/// A bank reverses a purchase on its own and repeats its 0420 until the switch records
/// it (sometimes once more: a duplicate).
async fn bank_advice(world: Arc<World>, dice: Dice, rrn: String) {
    let Some(bank) = world.banks.iter().find(|b| b.charges().contains_key(&rrn)) else {
        return;
    };
    if !bank.reverse_on_own(&rrn) {
        return;
    }
    let stan = dice.between(1, 999_999) as u32;
    let de7 = codec::clock::transmission(world.clock.unix_s());
    let advice = bank.advice(&rrn, stan, &de7);
    let mut sends = if dice.chance(300) { 2 } else { 1 };
    while sends > 0 {
        tokio::time::sleep(Duration::from_millis(dice.between(100, 3_000))).await;
        if !world.up.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let store: &dyn Store = &world.store;
        match switch::advices::apply(store, &bank.id, &advice).await {
            Ok(switch::advices::AdviceEffect::Deferred) | Err(_) => {}
            Ok(_) => sends -= 1,
        }
    }
}

/// Ends every fault: links up, fair weather, Redis reachable, writes succeed, the switch
/// running.
async fn heal(world: &Arc<World>) {
    for b in &world.banks {
        b.set_link(true);
        b.set_stormy(false);
    }
    world.claims.set_reachable(true);
    world.store.set_faults(None);
    if !world.up.load(std::sync::atomic::Ordering::SeqCst) {
        world.start().await;
    }
}

/// Waits (virtual time) until nothing is left to do: no transaction without a final
/// state, nothing to forward, no notification undelivered. False at the limit.
async fn quiesce(world: &Arc<World>) -> bool {
    let limit = world.clock.unix_s() + QUIESCENCE_MAX_S;
    while world.clock.unix_s() < limit {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let open = world
            .store
            .transactions()
            .iter()
            .any(|t| matches!(t.state, State::Authorising | State::Reversing));
        let notes = world
            .store
            .notification_backlog()
            .await
            .map(|b| b.pending)
            .unwrap_or(1);
        if !open && world.store.pending_forwards() == 0 && world.store.in_doubt() == 0 && notes == 0
        {
            return true;
        }
    }
    false
}
