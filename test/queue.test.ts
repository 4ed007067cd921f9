// The lock-free queues (csrc/queue.h) under ThreadSanitizer: builds
// test/native and runs its stress test (a plain C++ program, no Node addon
// involved): TaskQueue with racing producers, consumers and close(), the
// Parker's wake-ups, the CompletionQueue's doorbell. `npm run test:tsan`
// runs the same thing alone.
import t from 'tap'
import os from 'os'
import path from 'path'
import { spawnSync, SpawnSyncReturns } from 'child_process'

const dir = path.join(__dirname, 'native')
const bin = path.join(dir, 'out', 'queue_stress_tsan')
// Without LD_PRELOAD: under `npm run test:asan` it preloads libasan, and a
// ThreadSanitizer binary cannot start with ASan loaded beside it.
const { LD_PRELOAD: _preload, ...inherited } = process.env
const env = {
  ...inherited,
  TSAN_OPTIONS: ['halt_on_error=1', process.env.TSAN_OPTIONS].filter(Boolean).join(' ')
}

function stress (): SpawnSyncReturns<string> {
  const run = (cmd: string, args: string[]): SpawnSyncReturns<string> =>
    spawnSync(cmd, args, { env, encoding: 'utf8', maxBuffer: 64 << 20, timeout: 150_000 })
  const r = run(bin, [])
  // Older TSan runtimes cannot map their shadow under high ASLR entropy.
  if (/FATAL: ThreadSanitizer: unexpected memory mapping/.test(r.stderr ?? '')) {
    return run('setarch', [os.machine(), '-R', bin])
  }
  return r
}

t.test('queue stress test under ThreadSanitizer', async t => {
  const make = spawnSync('make', ['-s', '-C', dir, '-j2'], { encoding: 'utf8' })
  t.equal(make.status, 0, 'make -C test/native', { stderr: make.stderr, error: make.error?.message })
  if (make.status !== 0) return

  const r = stress()
  const out = `${r.stdout ?? ''}`
  const err = `${r.stderr ?? ''}`
  t.notOk(r.error, 'the stress test ran', { error: r.error?.message })
  t.equal(r.signal, null, 'not killed by a signal')
  t.equal(r.status, 0, 'exit code 0', { stdout: out.slice(-4000), stderr: err.slice(-8000) })
  t.notMatch(err, /WARNING: ThreadSanitizer/, 'no ThreadSanitizer report')
  t.notMatch(err, /queue_stress: FAIL/, 'no failed check')
  const summary = out.split('\n').find(l => l.startsWith('queue_stress: OK'))
  t.ok(summary, 'summary line printed')
  if (summary) t.comment(summary)
})
