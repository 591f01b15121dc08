//! Unit tests of the worker pool against SoftHSM2's module (no token needed).
use super::super::error::rv_name;
use super::*;

/// SoftHSM2 (`make tools`) with its packaged config: only the module is needed here. A
/// module initialises once per process, so the tests share it.
fn softhsm() -> &'static Token {
    static TOKEN: std::sync::OnceLock<Token> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let module = Path::new("/usr/lib/softhsm/libsofthsm2.so");
        assert!(
            module.exists(),
            "SoftHSM2 is not installed — run `make tools`"
        );
        Token::open(module, "unused", AuthPin::from("0000".to_owned())).expect("load SoftHSM2")
    })
}

/// The tests occupy the shared workers; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_hung_call_costs_its_budget_and_the_other_worker_keeps_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let token = softhsm();
    // A call that hangs for this long: time passing is the fault under test.
    const HANG: Duration = Duration::from_secs(2);
    let started = Instant::now();
    let hung = token.run(Duration::from_millis(200), |_| {
        std::thread::sleep(HANG);
        Ok(())
    });
    assert!(matches!(hung, Err(Pkcs11Error::Timeout { .. })), "{hung:?}");
    // Back at its budget, not when the hung call returns.
    assert!(started.elapsed() < HANG, "{:?}", started.elapsed());
    let answered = token.run(Duration::from_millis(500), |_| Ok(42));
    assert_eq!(answered.ok(), Some(42));
}

#[test]
fn a_full_queue_is_refused_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let token = softhsm();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Jobs hold a worker until the test releases this gate, however slow the machine.
    let gate = Arc::new(std::sync::RwLock::new(()));
    let closed = gate.write().unwrap_or_else(|p| p.into_inner());
    let job = || -> Job {
        let (running, gate) = (running.clone(), gate.clone());
        Box::new(move |_| {
            running.fetch_add(1, Ordering::SeqCst);
            drop(gate.read());
        })
    };
    let deadline = || Instant::now() + Duration::from_secs(5);
    // Occupy both workers, and wait until each runs its job: a worker still waking up would
    // otherwise take a job from the full queue and make room.
    for _ in 0..WORKERS {
        assert!(token.jobs.try_send((deadline(), job())).is_ok());
    }
    let waited = Instant::now();
    while running.load(Ordering::SeqCst) < WORKERS {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "workers did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Fill the queue; the workers stay busy until the gate opens.
    let mut queued = 0;
    while queued <= QUEUE && token.jobs.try_send((deadline(), job())).is_ok() {
        queued += 1;
    }
    assert_eq!(queued, QUEUE);
    // One more is "busy" without waiting.
    let started = Instant::now();
    let r = token.run(Duration::from_secs(5), |_| Ok(()));
    assert!(matches!(r, Err(Pkcs11Error::Busy { .. })), "{r:?}");
    // Nothing frees a worker meanwhile: an answer well inside the 5 s budget was not a wait.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(closed);
    // Let the workers drain before the next test uses them.
    let drained = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        token.run(Duration::from_secs(2), |_| Ok(())).is_ok()
    });
    assert!(drained);
}

#[test]
fn error_names_are_short() {
    assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
    assert_eq!(hex(&[0xa1, 0x02]), "a102");
}
