// The mistakes a first plugin makes, caught where they are made: dlhost.h's
// prototypes refuse a wrong signature at compile time, and ERR_SYMBOL_MISSING
// names the fix for a C++-mangled entry or a near miss.
import t from 'tap'
import { spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { load, reloadable } from '../lib/index'
import { root } from './lib/helpers'

const include = path.join(root, 'csrc', 'include')

function compile (dir: string, name: string, source: string, cxx = false): { ok: boolean, so: string, stderr: string } {
  const src = path.join(dir, `${name}.${cxx ? 'cc' : 'c'}`)
  const so = path.join(dir, `lib${name}.so`)
  fs.writeFileSync(src, source)
  const r = spawnSync(cxx ? 'c++' : 'cc', ['-fPIC', '-shared', '-I', include, '-o', so, src], { encoding: 'utf8' })
  return { ok: r.status === 0, so, stderr: r.stderr }
}

t.test("dlhost.h's prototypes: a wrong entry signature does not compile", async t => {
  const dir = t.testdir()
  const wrong = compile(dir, 'wrong', '#include "dlhost.h"\nchar *dlhost_handle(const char *req) { (void)req; return 0; }\n')
  t.notOk(wrong.ok, 'char *dlhost_handle(const char *) is refused')
  t.match(wrong.stderr, /conflicting types for .dlhost_handle/)
  const init = compile(dir, 'init', '#include "dlhost.h"\nint dlhost_init(const char *cfg, dlhost_queue *q) { (void)cfg; (void)q; return 0; }\n')
  t.notOk(init.ok, 'dlhost_init without its length is refused')
  // In C++ the header's extern "C" declaration gives the definition C linkage.
  const cxx = compile(dir, 'cxx', '#include "dlhost.h"\nint dlhost_handle(void *, const void *, size_t, void **, size_t *) { return 0; }\n', true)
  t.ok(cxx.ok, cxx.stderr)
  const rt = await load(cxx.so, '', { pin: false })
  t.equal(rt.abi, 'host', 'the C++ definition is found by its C name')
  await rt.unload()
})

t.test('ERR_SYMBOL_MISSING says how to fix it', async t => {
  const dir = t.testdir()
  const mangled = compile(dir, 'mangled', '#include <stddef.h>\nint dlhost_handle(void *, const void *, size_t, void **, size_t *) { return 0; }\n', true)
  t.ok(mangled.ok, mangled.stderr)
  const hint = { code: 'ERR_SYMBOL_MISSING', message: /_Z13dlhost_handle\w*, dlhost_handle with a C\+\+-mangled name; declare it extern "C"/ }
  await t.rejects(load(mangled.so), hint)
  await t.rejects(load(mangled.so, '', { isolate: 'process' }), hint)
  await t.rejects(reloadable(mangled.so, '', { watch: false }), hint)
  const near = compile(dir, 'near', 'int dlhost_handler(void) { return 0; }\n')
  t.ok(near.ok, near.stderr)
  await t.rejects(load(near.so), { code: 'ERR_SYMBOL_MISSING', message: /it exports dlhost_handler; did you mean dlhost_handle\?/ })
  const none = compile(dir, 'none', 'int unrelated_function(void) { return 0; }\n')
  await t.rejects(load(none.so), { code: 'ERR_SYMBOL_MISSING', message: /exports no plugin entry \(dlhost_init, dlhost_handle, libffi_init\)$/ })
  await t.rejects(load(near.so, '', { entry: 'native' }), { code: 'ERR_SYMBOL_MISSING' })
})
