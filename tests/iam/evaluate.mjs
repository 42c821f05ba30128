// Asks a real IAM policy evaluator (@cloud-copilot/iam-simulate, pinned in
// package-lock.json, installed by scripts/test) whether each request is
// allowed. cli/tests/deploy.rs runs it once over every call each role made.
//
// stdin:  {"requests": [{"role": "SubmitRole",
//                        "principal": "arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION",
//                        "identityPolicies": [{"name": "...", "policy": {...}}],
//                        "action": "sqs:SendMessage",
//                        "resource": "arn:..." | null,
//                        "context": {"aws:RequestTag/k": "v", ...}}]}
// stdout: {"results": [{"role", "action", "resource", "decision", "allowed",
//                       "why" (when not allowed), "allowedBy" (Sids),
//                       "unevaluated" (conditions it could not decide)}]},
//         one result per request, in order.
//
// A policy document may be given bare instead of as {name, policy}.
//
// What is known is decided exactly; what is not, is not guessed. The
// simulation runs in the evaluator's Discovery mode: a condition key given in
// `context` is authoritative (present, with that value), a key not given is
// unknown. A request is allowed when an Allow statement matches on action,
// resource and every condition it can decide; the conditions it could not
// decide (their keys were not recorded) come back in `unevaluated`, so the
// caller can say what was taken on trust. A request no statement can allow,
// whatever the unknown keys hold, is denied, with the evaluator's reasons.
// A `null` resource (the proxy did not record one) is evaluated as "*": a
// wildcard-only action as such, any other as any resource a statement names.

import { getDenialReasons, getGrantReasons, runSimulation } from '@cloud-copilot/iam-simulate'

const ACCOUNT_OF_ARN = /^arn:[^:]+:[^:]*:[^:]*:(\d{12}):/

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

function policies(req) {
  return (req.identityPolicies ?? []).map((p, i) =>
    p && typeof p === 'object' && 'policy' in p
      ? { name: String(p.name ?? `policy-${i + 1}`), policy: p.policy }
      : { name: `policy-${i + 1}`, policy: p }
  )
}

function list(x) {
  return x === undefined ? [] : Array.isArray(x) ? x : [x]
}

function statementName(s) {
  const sid = s.statement?.sid?.()
  return `${s.policyId}/${sid ?? `#${s.statement?.index?.() ?? '?'}`}`
}

// One condition as written: `Null aws:ResourceTag/studio:pool = false`.
function conditionText(c) {
  const values = c.conditionValues?.() ?? []
  return `${c.operation().value()} ${c.conditionKey()} = ${values.join('|')}`
}

// Why one statement that names the action does not apply here.
function statementMiss(s) {
  const e = s.explain
  const parts = []
  if (!e.resourceMatch) {
    const patterns = list(e.resources).map((r) => r.resource)
    parts.push(`resource not in [${patterns.join(', ')}]`)
  }
  if (!e.conditionMatch) {
    const failed = (e.conditions ?? []).filter((c) => !c.matches)
    for (const c of failed) {
      const want = list(c.values).map((v) => v.value)
      const why = c.failedBecauseMissing ? ' (key not in the request)' : ''
      parts.push(`condition ${c.operator} ${c.conditionKeyValue} = ${want.join('|')} not met${why}`)
    }
    if (failed.length === 0) parts.push('conditions not met')
  }
  return `${statementName(s)}: ${parts.join('; ') || 'does not match'}`
}

function analyses(response) {
  if (response.resultType === 'single') return [response.result]
  if (response.resultType === 'wildcard') return response.results
  return []
}

// The explanation of a denial: the evaluator's denial reasons, then each
// statement that allows the action and why it did not apply.
function why(response, action, context) {
  if (response.resultType === 'error') {
    return `the evaluator refused the request: ${JSON.stringify(response.errors)}`
  }
  const results = analyses(response)
  if (results.length === 0) {
    // A wildcard resource the evaluator found no allowing pattern for (it
    // keeps no analysis of that case).
    const given = Object.keys(context).length > 0 ? ` with context ${JSON.stringify(context)}` : ''
    return `implicit deny: no statement allows ${action} on any resource${given}`
  }
  const out = []
  for (const r of results) {
    const a = r.analysis
    const reasons = getDenialReasons(a).map((d) =>
      d.denialType === 'Explicit'
        ? `explicit deny by ${d.policyType} ${d.policyIdentifier ?? ''}/${d.statementId ?? `#${d.statementIndex}`}`
        : `implicit deny (${d.policyType})`
    )
    const id = a.identityAnalysis
    const near = [...(id?.unmatchedStatements ?? []), ...(id?.denyStatements ?? [])].filter(
      (s) => s.explain.effect === 'Allow' && s.actionMatch
    )
    const detail =
      near.length === 0
        ? `no statement allows ${action}`
        : `statements naming ${action}: ${near.map(statementMiss).join(' | ')}`
    const prefix = r.resourcePattern ? `as ${r.resourcePattern}: ` : ''
    out.push(`${prefix}${[...reasons, detail].join('; ')}`)
  }
  return out.join(' || ')
}

// The conditions of the allowing statements that could not be decided: the
// evaluator's ignored ones, and any whose key the request context lacks (it
// lets some of those pass on the missing key, `ForAllValues` for one, without
// reporting them).
function unevaluated(response, context) {
  const known = new Set(Object.keys(context).map((k) => k.toLowerCase()))
  const seen = new Set()
  for (const r of analyses(response)) {
    const a = r.analysis
    if (a.result !== 'Allowed') continue
    for (const s of a.identityAnalysis?.allowStatements ?? []) {
      const unknown = (s.statement.conditions?.() ?? []).filter(
        (c) => !known.has(c.conditionKey().toLowerCase())
      )
      for (const c of [...(s.ignoredConditions ?? []), ...unknown]) {
        seen.add(`${statementName(s)}: ${conditionText(c)}`)
      }
    }
  }
  return [...seen].sort()
}

async function evaluate(req) {
  const resource = req.resource ?? '*'
  const context = req.context ?? {}
  const account =
    ACCOUNT_OF_ARN.exec(resource)?.[1] ?? ACCOUNT_OF_ARN.exec(req.principal)?.[1] ?? ''
  const simulation = {
    request: {
      principal: req.principal,
      action: req.action,
      resource: { resource, accountId: account },
      contextVariables: context
    },
    identityPolicies: policies(req),
    serviceControlPolicies: [],
    resourceControlPolicies: []
  }
  // Every key given is authoritative; without this, Discovery mode would
  // also set aside a given key's condition that does not match.
  const discoveryContextKeyConstraints = Object.keys(context).map((keyName) => ({
    keyName,
    presenceIsKnown: true,
    valueIsKnown: true
  }))
  const response = await runSimulation(simulation, {
    simulationMode: 'Discovery',
    discoveryContextKeyConstraints
  })
  const decision = response.resultType === 'error' ? 'Error' : response.overallResult
  const result = {
    role: req.role,
    action: req.action,
    resource: req.resource ?? null,
    decision,
    allowed: decision === 'Allowed'
  }
  if (result.allowed) {
    result.allowedBy = [
      ...new Set(
        analyses(response)
          .filter((r) => r.analysis.result === 'Allowed')
          .flatMap((r) => getGrantReasons(r.analysis))
          .map((g) => `${g.policyIdentifier ?? g.policyType}/${g.statementId ?? `#${g.statementIndex}`}`)
      )
    ]
    result.unevaluated = unevaluated(response, context)
  } else {
    result.why = why(response, req.action, context)
  }
  // Keys given that do not apply to this action and resource were dropped.
  const dropped = [...new Set(analyses(response).flatMap((r) => r.ignoredContextKeys ?? []))]
  if (dropped.length > 0) result.ignoredContextKeys = dropped
  return result
}

const input = JSON.parse(await readStdin())
if (!Array.isArray(input.requests)) {
  process.stderr.write('evaluate.mjs: stdin must be {"requests": [...]}\n')
  process.exit(2)
}
const results = []
for (const req of input.requests) {
  results.push(await evaluate(req))
}
process.stdout.write(JSON.stringify({ results }, null, 1) + '\n')
