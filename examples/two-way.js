#!/usr/bin/env node
'use strict'
// Two-way plugins (Level 5), shown with the examples' counter and ticker:
// the counter's counts survive hot reloads (a rebuilt counter takes the old
// one's state), and the ticker talks first (messages from its own thread)
// and streams a file back in chunks. Needs a C compiler (cc) and
// `npm run build`. Exits 0 when every claim it prints held.
const { execFileSync } = require('child_process')
const crypto = require('crypto')
const fs = require('fs')
const os = require('os')
const path = require('path')
const dlhost = require('..')

const root = path.join(__dirname, '..')
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-two-way-'))
let failures = 0
function check (ok, what) {
  if (!ok) failures++
  process.stdout.write(`  ${ok ? 'ok ' : 'NOT OK'} ${what}\n`)
}
// Compile into a side file, then rename over the target: what a linker does.
function build (target, version) {
  execFileSync('cc', ['-O2', '-fPIC', '-shared', '-I' + path.join(root, 'csrc', 'include'), `-DPLUGIN_VERSION="${version}"`,
    '-o', target + '.tmp', path.join(__dirname, 'counter', 'counter.c')])
  fs.renameSync(target + '.tmp', target)
}

async function main () {
  console.log('counter: state across reloads, under load')
  const target = path.join(work, 'counter.so')
  build(target, '1')
  const plugin = await dlhost.reloadable(target, null, { watch: false })
  plugin.on('reload', ev => console.log(`  reload v${ev.from.seq} -> v${ev.to.seq}: ${ev.state.bytes} bytes of state, calls held ${ev.state.pauseMs} ms`))
  let hits = 0
  let stop = false
  const load = Promise.all(Array.from({ length: 16 }, async () => {
    while (!stop) { await plugin.call(`hit:k${hits % 5}`); hits++ }
  }))
  for (const v of ['2', '3']) {
    await new Promise(resolve => setTimeout(resolve, 50))
    build(target, v)
    await plugin.reload()
  }
  stop = true
  await load
  let counted = 0
  for (let k = 0; k < 5; k++) counted += Number((await plugin.call(`get:k${k}`)).toString())
  check(counted === hits, `${hits} hits across 3 versions, ${counted} counted`)
  check((await plugin.call('version')).toString() === '3', 'version 3 serves')
  const backup = await plugin.exportState()
  await plugin.close()
  const restored = await dlhost.reloadable(target, null, { watch: false, initialState: backup })
  check(Number((await restored.call('get:k0')).toString()) > 0, 'a new process would start from the backup (initialState)')
  await restored.close()

  console.log('ticker: messages from a plugin thread, and a streamed file')
  const ticker = await dlhost.load(path.join(__dirname, 'out', 'libticker.so'), '5')
  const ticks = []
  for await (const m of ticker.messages()) {
    ticks.push(m.toString())
    if (ticks.length === 3) break
  }
  check(ticks.join(',') === 'tick 1,tick 2,tick 3', `three ticks: ${ticks.join(', ')}`)
  const file = path.join(work, 'data.bin')
  fs.writeFileSync(file, crypto.randomBytes(5 * 1024 * 1024 + 123))
  const hash = crypto.createHash('sha256')
  let chunks = 0
  for await (const chunk of ticker.stream(`file:${file}`)) { hash.update(chunk); chunks++ }
  check(hash.digest('hex') === crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex'), `the file came back whole, in ${chunks} chunks`)
  await ticker.unload()
}

main().catch(err => { console.error(err); failures++ }).finally(() => {
  fs.rmSync(work, { recursive: true, force: true })
  process.exitCode = failures === 0 ? 0 : 1
})
