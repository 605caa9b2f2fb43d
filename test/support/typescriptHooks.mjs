/** The module hooks of test/support/typescript.mjs (they run on Node's loader thread). */
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { transform } from 'esbuild'

const relative = /^(\.{1,2}\/|file:)/

/** The sources import each other as `./x.js` (NodeNext); where no such file exists, `./x.ts`. */
export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context)
  } catch (error) {
    if (error?.code !== 'ERR_MODULE_NOT_FOUND' || !relative.test(specifier) || !specifier.endsWith('.js')) throw error
    return next(`${specifier.slice(0, -3)}.ts`, context)
  }
}

/** A `.ts` file as an ES module (the package is `"type": "module"`), types stripped. */
export async function load(url, context, next) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return next(url, context)
  const path = fileURLToPath(url)
  const { code } = await transform(await readFile(path, 'utf8'), {
    loader: 'ts',
    format: 'esm',
    target: `node${process.versions.node}`,
    sourcefile: path,
    sourcemap: 'inline',
    sourcesContent: true,
    // as tsc compiles them (tsconfig.json: target ES2022, isolatedModules)
    tsconfigRaw: { compilerOptions: { useDefineForClassFields: true, verbatimModuleSyntax: false } },
  })
  return { format: 'module', source: code, shortCircuit: true }
}
