// Nothing left on disk: a terminated worker removes its copy store; stores
// of processes that died (SIGKILL, a default-action signal) are removed by
// the next process that makes one there; a live process's store never is.
import t from 'tap'
import { spawn } from 'child_process'
import fs from 'fs'
import path from 'path'
import { Worker } from 'worker_threads'
import { reloadable } from '../lib/index'
import { copyOf, dist, examples } from './lib/helpers'

const echo = path.join(examples, 'libecho_host.so')
const stores = (dir: string): string[] => fs.readdirSync(dir).filter(n => n.startsWith('dlhost-')).sort()

t.test('a terminated worker removes its copy store', async t => {
  const dir = t.testdir()
  const lib = copyOf(echo, dir)
  const parent = path.join(dir, 'copies')
  fs.mkdirSync(parent, { mode: 0o700 })
  const w = new Worker(`
    const { parentPort } = require('worker_threads')
    const d = require(${JSON.stringify(dist)})
    d.reloadable(${JSON.stringify(lib)}, null, { copyDir: ${JSON.stringify(parent)} }).then(async p => {
      await p.call('x')
      parentPort.postMessage('ready')
      setInterval(() => p.call('y'), 5) // busy until terminated
    })`, { eval: true })
  await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject) })
  t.equal(stores(parent).length, 1, 'the worker made a store')
  await w.terminate()
  t.same(stores(parent), [], 'terminate() left no store behind')
})

function child (lib: string, parent: string): Promise<{ proc: ReturnType<typeof spawn>, store: string }> {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const proc = spawn(process.execPath, ['-e', `
    const d = require(${JSON.stringify(dist)})
    d.reloadable(${JSON.stringify(lib)}, null, { copyDir: ${JSON.stringify(parent)}, watch: false }).then(p => {
      console.log(require('path').dirname(p.version.copy))
      setInterval(() => {}, 1000)
    })`], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    let out = ''
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString()
      if (out.includes('\n')) resolve({ proc, store: out.trim() })
    })
    proc.once('exit', code => reject(new Error(`child exited (${String(code)}) before it made a store`)))
  })
}

function killed (proc: ReturnType<typeof spawn>, signal: NodeJS.Signals): Promise<void> {
  return new Promise(resolve => { proc.once('exit', () => resolve()); proc.kill(signal) })
}

t.test('stores of dead processes are swept by the next one; a live one is kept', async t => {
  const dir = t.testdir()
  const lib = copyOf(echo, dir)
  const parent = path.join(dir, 'copies')
  fs.mkdirSync(parent, { mode: 0o700 })
  const a = await child(lib, parent)
  const b = await child(lib, parent)
  const live = await child(lib, parent)
  t.teardown(() => { live.proc.kill('SIGKILL') })
  await killed(a.proc, 'SIGKILL')
  await killed(b.proc, 'SIGTERM') // default action: no 'exit' event, no clean-up
  t.same(stores(parent), [a.store, b.store, live.store].map(s => path.basename(s)).sort(), 'left behind by the signals')
  const plugin = await reloadable(lib, null, { copyDir: parent, watch: false })
  t.teardown(() => plugin.close())
  const left = stores(parent)
  t.notOk(left.includes(path.basename(a.store)), "the SIGKILL'd process's store is gone")
  t.notOk(left.includes(path.basename(b.store)), "the SIGTERM'd process's store is gone")
  t.ok(left.includes(path.basename(live.store)), "a live process's store is kept")
  t.equal(left.length, 2, 'and ours')
})
