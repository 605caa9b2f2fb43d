// One style across the tree: typescript-eslint's recommended rules, formatting left to prettier.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'
import prettier from 'eslint-config-prettier'

export default tseslint.config(
  { ignores: ['dist/', 'coverage/', '.tap/', 'artifacts/', 'node_modules/', 'examples/python/', 'scratch/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  prettier,
  {
    languageOptions: { ecmaVersion: 2022, sourceType: 'module', globals: { console: 'readonly', process: 'readonly' } },
    rules: {
      // `_`-prefixed names are deliberately unused (callback signatures, destructured-away fields)
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_' }],
      // non-null assertions mark invariants the types cannot express (a rollout's seq once logged)
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  {
    // the dashboard runs in the browser
    files: ['streams/dashboard/**/*.js'],
    languageOptions: {
      globals: {
        window: 'readonly',
        document: 'readonly',
        sessionStorage: 'readonly',
        location: 'readonly',
        history: 'readonly',
        WebSocket: 'readonly',
        requestAnimationFrame: 'readonly',
        performance: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        URL: 'readonly',
        URLSearchParams: 'readonly',
        fetch: 'readonly',
        devicePixelRatio: 'readonly',
        getComputedStyle: 'readonly',
        ResizeObserver: 'readonly',
        Intl: 'readonly',
        TextDecoder: 'readonly',
        Date: 'readonly',
        Math: 'readonly',
      },
    },
  },
)
