// The README runs as written: its plugin builds (cc -Wall -Wextra -Werror),
// and its JavaScript blocks (CommonJS and ESM) run against that plugin.
import t from 'tap'
import { execFileSync, spawnSync } from 'child_process'
import fs from 'fs'
import path from 'path'
import { root } from './lib/helpers'

const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8')
const blocks = (lang: string): string[] => [...readme.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map(m => m[1] as string)

t.test("the README's plugin and snippets run as written", async t => {
  const dir = t.testdir()
  const [plugin] = blocks('c')
  t.ok(plugin !== undefined && plugin.includes('dlhost_handle'), 'the plugin of "Writing a plugin"')
  fs.writeFileSync(path.join(dir, 'upper.c'), plugin as string)
  execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-fPIC', '-shared', '-I', path.join(root, 'csrc', 'include'), '-o', path.join(dir, 'libupper.so'), path.join(dir, 'upper.c')])
  t.pass('it builds with -Wall -Wextra -Werror')
  // require('dlhost') / import 'dlhost' resolve to this checkout, as to an installed package.
  fs.mkdirSync(path.join(dir, 'node_modules'))
  fs.symlinkSync(root, path.join(dir, 'node_modules', 'dlhost'))
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const js = blocks('js')
  const mjs = blocks('mjs')
  t.ok(js.length >= 1 && mjs.length >= 1, 'CommonJS and ESM blocks')
  const expect: Record<string, RegExp[]> = { cjs: [/HELLO/, /ABC/, /true/], mjs: [/unloadable host/, /ISOLATED/] }
  for (const [ext, list] of [['cjs', js], ['mjs', mjs]] as const) {
    list.forEach((code, i) => {
      const file = path.join(dir, `snippet${i}.${ext}`)
      fs.writeFileSync(file, code)
      const r = spawnSync(process.execPath, [file], { cwd: dir, env, encoding: 'utf8', timeout: 30000 })
      t.equal(r.status, 0, `${ext} block ${i} runs: ${r.stderr}`)
      for (const re of expect[ext] ?? []) t.match(r.stdout, re)
    })
  }
})

t.test('the README documents every error code and every public member', async t => {
  const { codes } = await import('../lib/errors')
  for (const code of Object.keys(codes)) t.ok(readme.includes(`\`${code}\``), code)
  for (const member of ['ERR_INVALID_ARG_TYPE', 'ERR_OUT_OF_RANGE', 'pin()', '`released`', '`state`', '`path`, `strategy`, `reloads`', '`abiVersion`', '`global`', 'inspect(path) → Promise<InspectReport>']) {
    t.ok(readme.includes(member), member)
  }
})
