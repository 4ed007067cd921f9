// The two-way examples (examples/counter, examples/ticker) and their demo
// (examples/two-way.js), in process and isolated.
import t from 'tap'
import { execFileSync, spawnSync } from 'child_process'
import crypto from 'crypto'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { load, reloadable, type Runtime } from '../lib/index'
import { examples, root } from './lib/helpers'

t.test('examples/two-way.js holds every claim it prints', async t => {
  const env = { ...process.env }
  delete env.NODE_OPTIONS // plain node, the way a user runs it
  const r = spawnSync(process.execPath, [path.join(root, 'examples', 'two-way.js')], { encoding: 'utf8', timeout: 60000, env })
  t.equal(r.status, 0, r.stdout + r.stderr)
  t.notMatch(r.stdout, /NOT OK/)
  t.match(r.stdout, /ok {2}\d+ hits across 3 versions, \d+ counted/)
})

t.test('isolated: the counter keeps its counts across a reload; the ticker ticks and streams', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-ex-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const target = path.join(dir, 'counter.so')
  const build = (v: string): void => {
    execFileSync('cc', ['-O2', '-fPIC', '-shared', '-I' + path.join(root, 'csrc', 'include'), `-DPLUGIN_VERSION="${v}"`, '-o', target + '.tmp', path.join(root, 'examples', 'counter', 'counter.c')])
    fs.renameSync(target + '.tmp', target)
  }
  build('1')
  const plugin = await reloadable(target, null, { watch: false, isolate: 'process' })
  t.teardown(() => plugin.close())
  await Promise.all(Array.from({ length: 50 }, (_, i) => plugin.call(`hit:${i % 3}`)))
  build('2')
  await plugin.reload()
  t.equal((await plugin.call('version')).toString(), '2')
  t.equal((await plugin.call('get:0')).toString(), '17', 'counts carried into the new child')
  t.equal((await plugin.call('keys')).toString(), '3')

  const ticker = await load(path.join(examples, 'libticker.so'), '2', { isolate: 'process' }) as unknown as Runtime
  t.teardown(() => ticker.unload())
  const got: string[] = []
  for await (const m of ticker.messages()) { got.push(m.toString()); if (got.length === 2) break }
  t.same(got, ['tick 1', 'tick 2'])
  const file = path.join(dir, 'data.bin')
  fs.writeFileSync(file, crypto.randomBytes(3 * 65536 + 7))
  const parts: Buffer[] = []
  for await (const c of ticker.stream(`file:${file}`)) parts.push(Buffer.from(c))
  t.ok(Buffer.concat(parts).equals(fs.readFileSync(file)), 'the file, whole')
  t.equal(parts.length, 4)
  await t.rejects((async () => { for await (const c of ticker.stream(`file:${path.join(dir, 'missing')}`)) t.fail(String(c)) })(), { code: 'ERR_PLUGIN', rc: 2 })
})
