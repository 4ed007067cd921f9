#!/usr/bin/env node
'use strict'
// `npm run test:tsan`: the lock-free queues (csrc/queue.h) under
// ThreadSanitizer. Builds test/native (make) and runs its stress test,
// out/queue_stress_tsan: a plain C++ program, no Node and no addon involved
// (an uninstrumented node and TSan do not mix). Every TSan report is fatal
// (halt_on_error=1); the exit code is the test's.
//
// Usage: node scripts/tsan.js [scale]   (scale multiplies the iteration
// counts, default 1: ~3-10 s on 2 cores). Extra TSAN_OPTIONS are appended.
const { spawnSync } = require('child_process')
const os = require('os')
const path = require('path')

const dir = path.join(__dirname, '..', 'test', 'native')
const bin = path.join(dir, 'out', 'queue_stress_tsan')
const log = (msg) => process.stderr.write(`tsan: ${msg}\n`)

const make = spawnSync('make', ['-s', '-C', dir, '-j2', 'out/queue_stress_tsan'], { stdio: 'inherit' })
if (make.error || make.status !== 0) {
  log(`make failed${make.error ? ': ' + make.error.message : ''}`)
  process.exit(make.status || 1)
}

const env = {
  ...process.env,
  TSAN_OPTIONS: ['halt_on_error=1', process.env.TSAN_OPTIONS].filter(Boolean).join(' ')
}
const args = process.argv.slice(2)
const run = (cmd, argv) => spawnSync(cmd, argv, { env, encoding: 'utf8', maxBuffer: 64 << 20 })

let r = run(bin, args)
// Kernels with vm.mmap_rnd_bits > 28 break older TSan runtimes ("unexpected
// memory mapping"): retry without address randomisation.
if (/FATAL: ThreadSanitizer: unexpected memory mapping/.test(r.stderr || '')) {
  log('TSan cannot map its shadow memory under this ASLR; retrying with setarch -R')
  r = run('setarch', [os.machine ? os.machine() : process.arch === 'x64' ? 'x86_64' : process.arch, '-R', bin, ...args])
}
process.stdout.write(r.stdout || '')
process.stderr.write(r.stderr || '')
if (r.error) {
  log(r.error.message)
  process.exit(1)
}
if (r.signal) log(`killed by ${r.signal}`)
process.exit(r.status === null ? 1 : r.status)
