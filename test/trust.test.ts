// Trust: never run code another local user could have planted (OpenSSH's
// StrictModes, applied to code). The foreign-owner cases need root (chown).
import t from 'tap'
import fs from 'fs'
import path from 'path'
import { inspect, load, open, reloadable, DlhostError, type Plugin } from '../lib/index'
import { copyOf, examples } from './lib/helpers'

const echo = path.join(examples, 'libecho_host.so')
const root = process.geteuid?.() === 0
const NOBODY = 65534

t.test('a file writable by others, or in a writable non-sticky directory: ERR_UNTRUSTED', async t => {
  const dir = t.testdir({ open: {}, sticky: {} })
  const lib = copyOf(echo, dir, 'lib.so')
  fs.chmodSync(lib, 0o666)
  t.throws(() => open(lib), { code: 'ERR_UNTRUSTED', reason: /writable by (its group|others)/ }, '0666 file')
  await t.rejects(load(lib), { code: 'ERR_UNTRUSTED' })
  await t.rejects(reloadable(lib, null, { watch: false }), { code: 'ERR_UNTRUSTED' })
  t.match(await inspect(lib), { trusted: false, untrusted: /writable/ }, 'inspect says so')
  fs.chmodSync(lib, 0o644)
  const inOpen = copyOf(echo, path.join(dir, 'open'), 'lib.so')
  fs.chmodSync(path.join(dir, 'open'), 0o777)
  t.throws(() => open(inOpen), { code: 'ERR_UNTRUSTED', reason: /not sticky/ }, 'a 0777 directory on the path')
  const inSticky = copyOf(echo, path.join(dir, 'sticky'), 'lib.so')
  fs.chmodSync(path.join(dir, 'sticky'), 0o1777)
  const ok = open(inSticky)
  t.pass('a file we own in a sticky directory is fine')
  ok.release()
  t.match(await inspect(inSticky), { trusted: true })
  const any = open(lib, { pin: false, trust: 'any' })
  t.pass("trust: 'any' turns the check off")
  any.release()
  t.throws(() => open(lib, { trust: { uids: [-1] } }), { code: 'ERR_INVALID_ARG_TYPE' })
})

t.test('a file or directory owned by another user: ERR_UNTRUSTED unless trusted by uid', { skip: !root && 'needs root to chown' }, async t => {
  const dir = t.testdir({ theirs: {} })
  const lib = copyOf(echo, dir, 'foreign.so')
  fs.chownSync(lib, NOBODY, NOBODY)
  const e = (() => { try { open(lib) } catch (err) { return err as DlhostError } })()
  t.match(e, { code: 'ERR_UNTRUSTED', path: lib, reason: /owned by uid 65534/ })
  const ok = open(lib, { pin: false, trust: { uids: [NOBODY] } })
  t.pass('trusted by uid')
  ok.release()
  const inTheirs = copyOf(echo, path.join(dir, 'theirs'), 'lib.so')
  fs.chownSync(path.join(dir, 'theirs'), NOBODY, NOBODY)
  t.throws(() => open(inTheirs), { code: 'ERR_UNTRUSTED', reason: /a directory on its path is owned by uid 65534/ })
})

t.test('reloadable: a build planted by another user is refused, the old version serves', { skip: !root && 'needs root to chown' }, async t => {
  const dir = t.testdir()
  fs.chmodSync(dir, 0o1777) // a shared, sticky directory, as /tmp
  const lib = copyOf(echo, dir, 'libplugin.so')
  const plugin: Plugin = await reloadable(lib, null, { settleMs: 20 })
  t.teardown(() => plugin.close())
  const error = new Promise<DlhostError>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no error event')), 10000) // also keeps the loop alive
    plugin.once('error', e => { clearTimeout(timer); resolve(e) })
  })
  // Another user deletes ours (not possible in a sticky dir, so: root plays
  // them) and puts theirs in its place.
  const planted = path.join(dir, 'planted.so')
  fs.copyFileSync(echo, planted)
  fs.chownSync(planted, NOBODY, NOBODY)
  fs.renameSync(planted, lib)
  const e = await error
  t.equal(e.code, 'ERR_UNTRUSTED')
  await t.rejects(plugin.reload(), { code: 'ERR_UNTRUSTED' })
  t.equal((await plugin.call('still')).toString(), 'still', 'the old version serves')
  t.equal(plugin.reloads, 0, 'nothing of theirs was loaded')
})
