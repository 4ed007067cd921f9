'use strict'
// The measuring harness: rounds of latency, throughput and tight loops, CPU
// time per thread, and the statistics over rounds.
const fs = require('fs')
const { performance } = require('perf_hooks')

const log = (...a) => process.stderr.write(a.join(' ') + '\n')
const now = () => performance.now() // ms, sub-µs resolution
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

function quantile (sorted, q) {
  if (sorted.length === 0) return NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]
}
function median (xs) {
  const s = Float64Array.from(xs).sort()
  if (s.length === 0) return NaN
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
function summarize (samples) { // Float64Array (copied, sorted)
  const s = Float64Array.from(samples).sort()
  return { n: s.length, median: quantile(s, 0.5), p99: quantile(s, 0.99), min: s[0], max: s[s.length - 1] }
}
const round3 = (x) => Number.isFinite(x) ? Math.round(x * 1000) / 1000 : x

// Latency of one awaited call at a time, for ms milliseconds. µs per call.
const MAX_SAMPLES = 1 << 20
const sampleBuf = new Float64Array(MAX_SAMPLES)
async function latencyRound (fn, ms) {
  let n = 0
  const end = now() + ms
  for (;;) {
    const t0 = now()
    await fn()
    const t1 = now()
    sampleBuf[n++] = (t1 - t0) * 1000
    if (t1 > end || n === MAX_SAMPLES) break
  }
  return summarize(sampleBuf.subarray(0, n))
}

// `depth` calls in flight for ms milliseconds (each completion issues the
// next). Returns calls/s and the count of failed calls.
function throughputRound (fn, depth, ms) {
  return new Promise(resolve => {
    let issued = 0
    let done = 0
    let failed = 0
    let stop = false
    const t0 = now()
    const end = t0 + ms
    const settle = () => {
      done++
      if (!stop && (done & 31) === 0 && now() > end) stop = true
      if (!stop) { issue(); return }
      if (done === issued) {
        const secs = (now() - t0) / 1000
        resolve({ callsPerSec: done / secs, calls: done, failed })
      }
    }
    const fail = () => { failed++; settle() }
    function issue () { issued++; fn().then(settle, fail) }
    for (let i = 0; i < depth; i++) issue()
  })
}

// A synchronous function in a tight loop for ms milliseconds: ns per call.
function syncRound (fn, ms) {
  const BLOCK = 10000
  let n = 0
  const t0 = now()
  const end = t0 + ms
  let t
  do {
    for (let i = 0; i < BLOCK; i++) fn()
    n += BLOCK
    t = now()
  } while (t < end)
  return ((t - t0) * 1e6) / n
}

// Time on CPU (ns, from /proc/<pid>/task/*/schedstat) of each thread of a
// process. Threads that exited meanwhile are not counted.
function taskTimes (pid = 'self') {
  const out = []
  let tids
  try { tids = fs.readdirSync(`/proc/${pid}/task`) } catch { return out }
  for (const tid of tids) {
    try { out.push([Number(tid), Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0])]) } catch {}
  }
  return out
}

// The JS (main) thread's CPU ns, and every other thread's (poll threads,
// plugin threads, libuv threadpool, V8 helpers), of this process.
function threadTimes () {
  const all = taskTimes()
  if (all.length === 0) return null
  let main = 0
  let rest = 0
  for (const [tid, ns] of all) {
    if (tid === process.pid) main = ns
    else rest += ns
  }
  return { main, rest }
}

// CPU ns of every thread of each of `pids` so far.
function cpuNs (pids) {
  let ns = 0
  for (const pid of pids) for (const [, t] of taskTimes(pid === process.pid ? 'self' : pid)) ns += t
  return ns
}

function cpuPercent (fromUsage, wallMs) {
  const u = process.cpuUsage(fromUsage)
  return ((u.user + u.system) / 1000 / wallMs) * 100 // 100 = one core
}

async function warm (fn, ms = 150) {
  const end = now() + ms
  while (now() < end) await fn()
}

module.exports = { log, now, sleep, quantile, median, summarize, round3, latencyRound, throughputRound, syncRound, threadTimes, cpuNs, cpuPercent, warm }
