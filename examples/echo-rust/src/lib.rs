// Build by hand (from examples/): rustc --edition 2021 --crate-type cdylib --crate-name echo_rust -O -C panic=abort -C strip=debuginfo -C link-arg=-Wl,-z,undefs -o out/libecho_rust.so echo-rust/src/lib.rs
//
// echo-rust — a *plugin-driven* dlhost plugin in Rust, std only.
//
// The host functions of dlhost.h are declared `extern "C"` below and are not
// linked in: they stay undefined in libecho_rust.so and the dynamic loader
// resolves them at dlopen time against the dlhost addon, which makes them
// globally visible before it loads a plugin. `-C link-arg=-Wl,-z,undefs`
// states that explicitly (rustc does not pass `-z defs` today, but a linker or
// a distribution default that did would reject the library). Note that rustc
// links with `-z now`: the host symbols must exist at dlopen time even with
// RTLD_LAZY - which they do under dlhost.
//
// Threads: N pollers (cfg "threads=N" or {"threads":N}, default 2, at most
// 64), all detached. Each polls with dlhost_task_poll until it returns NULL.
// The runtime's state is an Arc held by every thread; the last one out frees
// it. Before dlhost dlclose()s the library it waits until every thread that
// ever polled the queue has exited - which covers the code std runs after our
// closure returns (dropping the thread's packet, thread-local destructors).
// The host only knows a thread once it has polled, so no thread leaves before
// all its siblings have seen the end of the queue (Runtime::leave, an exit
// barrier).
//
// Why the first poller is a raw pthread: std::thread::spawn touches
// thread-locals of the *calling* thread (e.g. the spawn-hook list) and so
// registers a thread-local destructor for it, owned by this library, via
// __cxa_thread_atexit_impl. glibc refuses to unmap a library while any thread
// still has such a destructor pending. Spawned from dlhost_init - i.e. on
// Node's JS thread, which lives as long as the process - that destructor would
// pin libecho_rust.so for ever and dlclose would silently keep it mapped
// (dlhost reports it `stuck`). So dlhost_init starts one bootstrap thread with
// pthread_create and touches no thread-local itself; the bootstrap thread
// spawns the other pollers with std::thread and then polls too. Its
// destructors run when it exits, before dlhost sees it gone.
//
// Behaviour (relied on by tests, demos and benchmarks; identical in every
// example plugin):
//   "fail:N"   rc = N (decimal, optional sign; no digits -> 1), body "failed"
//   "cfg"      the cfg the runtime was initialised with, byte for byte
//   "version"  PLUGIN_VERSION, read from the environment at *compile* time
//              (PLUGIN_VERSION=2 rustc ...), default "1"
//   "count"    decimal number of requests this runtime has handled, this one
//              included
//   "pid"      decimal process id
//   "sleep:N"  sleeps N milliseconds (at most one hour), then echoes
//   anything else, including the empty request: echoed byte for byte
// dlhost_init returns 7 (ERR_INIT_FAILED, no thread started) when the cfg
// contains "fail-init", and 2 when the host speaks another ABI version.
//
// A panic aborts the process (panic=abort): a plugin must never unwind into
// the host, and this one does not panic on any input.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// DLHOST_ABI_VERSION of the dlhost.h this plugin was written against.
const DLHOST_ABI_VERSION: c_uint = 1;
const VERSION: &str = match option_env!("PLUGIN_VERSION") {
    Some(v) => v,
    None => "1",
};
const MAX_THREADS: i64 = 64;
const ENOMEM: c_int = 12;
const EAGAIN: c_int = 11;

/// Opaque host types (dlhost_queue, dlhost_task): only ever behind pointers.
#[repr(C)]
pub struct DlhostQueue {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct DlhostTask {
    _opaque: [u8; 0],
}

// The host ABI (dlhost.h), resolved at dlopen time.
extern "C" {
    fn dlhost_abi_version() -> c_uint;
    fn dlhost_task_poll(q: *mut DlhostQueue) -> *mut DlhostTask;
    fn dlhost_task_request(t: *mut DlhostTask, len: *mut usize) -> *const c_void;
    fn dlhost_task_respond(t: *mut DlhostTask, rc: c_int, rsp: *mut c_void, len: usize);
}
// From libc. The response must come from the C allocator: the host free()s it.
extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn pthread_create(
        thread: *mut PthreadT,
        attr: *const c_void,
        start: extern "C" fn(*mut c_void) -> *mut c_void,
        arg: *mut c_void,
    ) -> c_int;
    fn pthread_detach(thread: PthreadT) -> c_int;
}
type PthreadT = std::ffi::c_ulong; // glibc's pthread_t

/// The queue pointer, shared by the pool threads. dlhost allows any number
/// of threads to poll one queue at once.
struct Queue(*mut DlhostQueue);
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

struct ExitCount {
    wanted: u32,   // pollers asked for by the cfg
    started: u32,  // pollers running (the bootstrap thread included)
    finished: u32, // pollers that saw the end of the queue
}

/// One runtime, shared (Arc) by the threads that serve it.
struct Runtime {
    q: Queue,     // valid until a poll returns NULL
    cfg: Vec<u8>, // private copy: the host's cfg dies after init
    calls: AtomicU64,
    exit: Mutex<ExitCount>,
    cv: Condvar,
}

// ---------------------------------------------------------------- helpers

/// Decimal number at the start of s: optional sign, then digits, stops at the
/// first non-digit, clamped to [lo, hi]; `dflt` when there is no digit.
fn parse_num(s: &[u8], lo: i64, hi: i64, dflt: i64) -> i64 {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    let mut any = false;
    for &c in digits.iter().take_while(|c| c.is_ascii_digit()) {
        any = true;
        v = v.saturating_mul(10).saturating_add(i64::from(c - b'0'));
    }
    if !any {
        return dflt;
    }
    (if neg { -v } else { v }).clamp(lo, hi)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The number after `key` in the cfg ("threads=4", "threads: 4", {"threads":4}).
fn cfg_num(cfg: &[u8], key: &[u8], lo: i64, hi: i64, dflt: i64) -> i64 {
    match find(cfg, key) {
        None => dflt,
        Some(at) => {
            let rest = &cfg[at + key.len()..];
            let skip = rest.iter().take_while(|c| b"\"'=: \t".contains(c)).count();
            parse_num(&rest[skip..], lo, hi, dflt)
        }
    }
}

/// A malloc'd, NUL-terminated copy of `body` (NULL for an empty answer).
fn to_malloc(body: &[u8]) -> Option<*mut c_void> {
    if body.is_empty() {
        return Some(std::ptr::null_mut());
    }
    unsafe {
        let p = malloc(body.len() + 1) as *mut u8;
        if p.is_null() {
            return None;
        }
        std::ptr::copy_nonoverlapping(body.as_ptr(), p, body.len());
        *p.add(body.len()) = 0;
        Some(p as *mut c_void)
    }
}

// ---------------------------------------------------------------- runtime

impl Runtime {
    fn lock(&self) -> MutexGuard<'_, ExitCount> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers one task, exactly once.
    fn serve(&self, t: *mut DlhostTask) {
        let mut len = 0usize;
        let p = unsafe { dlhost_task_request(t, &mut len) } as *const u8;
        // Host-owned, valid until we respond.
        let req: &[u8] = if p.is_null() || len == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(p, len) }
        };
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rc: c_int = 0;
        let tmp: String;
        let body: &[u8] = if let Some(num) = req.strip_prefix(b"fail:") {
            rc = parse_num(num, i64::from(c_int::MIN), i64::from(c_int::MAX), 1) as c_int;
            b"failed"
        } else if req == b"cfg" {
            &self.cfg
        } else if req == b"version" {
            VERSION.as_bytes()
        } else if req == b"count" {
            tmp = n.to_string();
            tmp.as_bytes()
        } else if req == b"pid" {
            tmp = std::process::id().to_string();
            tmp.as_bytes()
        } else if let Some(ms) = req.strip_prefix(b"sleep:") {
            thread::sleep(Duration::from_millis(parse_num(ms, 0, 3_600_000, 0) as u64));
            req
        } else {
            req // echo
        };
        let (rsp, rsp_len) = match to_malloc(body) {
            Some(rsp) => (rsp, body.len()),
            None => {
                rc = ENOMEM;
                (std::ptr::null_mut(), 0)
            }
        };
        // The host takes ownership of rsp and frees it; t is gone after this.
        unsafe { dlhost_task_respond(t, rc, rsp, rsp_len) };
    }

    /// Exit barrier: wait until every thread has seen the end of the queue,
    /// so every thread has polled (and is known to the host) before any one
    /// exits.
    fn leave(&self) {
        let mut g = self.lock();
        g.finished += 1;
        if g.finished == g.started {
            self.cv.notify_all();
        }
        while g.finished < g.started {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A pool thread, with its own reference to the runtime.
fn worker(rt: Arc<Runtime>) {
    loop {
        // NULL: the runtime is unloading and every task queued before the
        // unload has been taken. The queue must not be touched again.
        let t = unsafe { dlhost_task_poll(rt.q.0) };
        if t.is_null() {
            break;
        }
        rt.serve(t);
    }
    rt.leave();
    // Dropping `rt` here; the last thread out frees the Runtime.
}

/// The bootstrap thread (raw pthread, see the top of the file): starts the
/// other pollers with std::thread, then becomes poller 0. `arg` is an
/// Arc<Runtime> turned into a raw pointer by dlhost_init.
extern "C" fn bootstrap(arg: *mut c_void) -> *mut c_void {
    let rt = unsafe { Arc::from_raw(arg as *const Runtime) };
    {
        // Held while the threads start, so the barrier count is final before
        // any thread can reach it.
        let mut g = rt.lock();
        let wanted = g.wanted;
        for i in 1..wanted {
            let mine = Arc::clone(&rt);
            let spawned = thread::Builder::new()
                .name(format!("echo-rust-{i}"))
                .spawn(move || worker(mine));
            match spawned {
                Ok(_detached) => g.started += 1, // dropping the JoinHandle detaches
                Err(_) => break,                 // out of threads: run with those we have
            }
        }
    }
    worker(rt);
    std::ptr::null_mut()
}

// ------------------------------------------------------------- plugin ABI

/// Called once per runtime on the JS thread. `cfg` (cfg_len bytes, NUL after
/// them) is valid only during the call. Touches no thread-local (see above).
///
/// # Safety
/// Called by dlhost with the pointers described in dlhost.h.
#[no_mangle]
pub unsafe extern "C" fn dlhost_init(cfg: *const c_char, cfg_len: usize, q: *mut DlhostQueue) -> c_int {
    if dlhost_abi_version() != DLHOST_ABI_VERSION {
        return 2;
    }
    let cfg: Vec<u8> = if cfg.is_null() || cfg_len == 0 {
        Vec::new()
    } else {
        std::slice::from_raw_parts(cfg as *const u8, cfg_len).to_vec()
    };
    if find(&cfg, b"fail-init").is_some() {
        return 7; // -> ERR_INIT_FAILED
    }
    let wanted = cfg_num(&cfg, b"threads", 1, MAX_THREADS, 2) as u32;
    let rt = Arc::new(Runtime {
        q: Queue(q),
        cfg,
        calls: AtomicU64::new(0),
        exit: Mutex::new(ExitCount { wanted, started: 1, finished: 0 }),
        cv: Condvar::new(),
    });
    let arg = Arc::into_raw(rt) as *mut c_void;
    let mut tid: PthreadT = 0;
    if pthread_create(&mut tid, std::ptr::null(), bootstrap, arg) != 0 {
        drop(Arc::from_raw(arg as *const Runtime));
        return EAGAIN; // nobody polls q: we may still fail
    }
    pthread_detach(tid);
    0
}
