#!/usr/bin/env node
// Contract test: flatfile-sim's Platform answers, and the request bodies flatsync sends,
// checked with the serialization schemas of Flatfile's own SDK (@flatfile/api) in strict mode:
// no unknown object keys, no unknown union members or enum values.
//
// Usage: node tests/contract/check.mjs <path to the flatfile-sim binary>
// (after `npm ci --prefix tests/contract`). It starts the simulator on 127.0.0.1:0 with keys
// passed through the environment, drives it through the admin API so that every shape exists,
// calls every Platform endpoint flatsync calls, and exits non-zero on any mismatch, printing
// the endpoint, the path inside the body and the schema's message.
//
// Plain fetch on purpose: on Node 20 the SDK's own HTTP client adds a Keep-Alive header that
// fetch refuses; only the schemas are needed.

import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const require = createRequire(import.meta.url);
const schemas = require("@flatfile/api/serialization");

const STRICT = {
  unrecognizedObjectKeys: "fail",
  allowUnrecognizedUnionMembers: false,
  allowUnrecognizedEnumValues: false,
  skipValidation: false,
};
const SECRET_KEY = "sk_contract_check";
const LEGACY_KEY = "contract-key+contract-secret";
const START_TIMEOUT_MS = 30_000;

const binary = process.argv[2];
if (!binary) {
  console.error("usage: node tests/contract/check.mjs <path to flatfile-sim>");
  process.exit(2);
}

const endpoints = new Set();
let bodiesChecked = 0;
const failures = [];

/** Validates `body` with `serialization.<type>`, strictly; records each error with `where`. */
function check(where, type, body) {
  const schema = schemas[type];
  if (!schema) {
    failures.push(`${where}: @flatfile/api has no schema ${type}`);
    return;
  }
  bodiesChecked += 1;
  const result = schema.parse(body, { ...STRICT, breadcrumbsPrefix: [] });
  if (!result.ok) {
    for (const error of result.errors) {
      const path = error.path.length ? error.path.join(".") : "(body)";
      failures.push(`${where} [${type}] ${path}: ${error.message}`);
    }
  }
}

function startSimulator() {
  const child = spawn(
    binary,
    ["--listen", "127.0.0.1:0", "--rows", "40", "--seed", "10", "--sheets", "2"],
    {
      env: {
        ...process.env,
        FLATFILE_SIM_SECRET_KEY: SECRET_KEY,
        FLATFILE_SIM_LEGACY_API_KEY: LEGACY_KEY,
        FLATFILE_SIM_ENVIRONMENTS: "",
        RUST_LOG: "warn",
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`${binary} printed no start line within ${START_TIMEOUT_MS} ms`));
    }, START_TIMEOUT_MS);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${binary}: ${error.message}`));
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${binary} exited (${code}) before it listened`));
    });
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      clearTimeout(timer);
      const url = line.split(/\s+/).find((word) => word.startsWith("http://"));
      if (!url) {
        child.kill();
        reject(new Error(`the start line names no URL: ${line}`));
        return;
      }
      child.removeAllListeners("exit");
      // Keep reading so the simulator never blocks on a full pipe.
      lines.on("line", () => {});
      resolve({ child, base: url.replace(/[/,;]+$/, "") });
    });
  });
}

async function main() {
  const { child, base } = await startSimulator();
  try {
    await run(base);
  } finally {
    child.kill("SIGTERM");
  }
  const summary = `contract: ${endpoints.size} endpoints, ${bodiesChecked} bodies checked, ${failures.length} failures`;
  for (const failure of failures) console.error(`FAIL ${failure}`);
  console.log(summary);
  process.exit(failures.length === 0 ? 0 : 1);
}

/** Calls the simulator; `endpoint` names the route for the report. */
async function call(base, method, path, { endpoint, body, auth = true, expect = 200 } = {}) {
  const headers = { "X-Disable-Hooks": "true" };
  if (auth) headers.Authorization = `Bearer ${SECRET_KEY}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (endpoint) endpoints.add(endpoint);
  if (response.status !== expect) {
    throw new Error(`${method} ${path} answered ${response.status}, not ${expect}: ${text}`);
  }
  return text ? JSON.parse(text) : undefined;
}

const admin = (base, method, path, body) =>
  call(base, method, path, { body, auth: false });

async function run(base) {
  // Shapes: a submit of two sheets, record adds, edits and deletes, a multi-part submit.
  const submitted = await admin(base, "POST", "/_sim/submit", { rows: 40 });
  if (submitted.sheets.length !== 2) throw new Error(`a submit of 2 sheets gave ${submitted.sheets.length}`);
  const [contacts, companies] = submitted.sheets.map((sheet) => sheet.id);
  const added = await admin(base, "POST", `/_sim/sheets/${contacts}/records`, { count: 3 });
  const rows = await admin(base, "GET", `/_sim/sheets/${contacts}/records`);
  const edited = await admin(base, "PATCH", `/_sim/sheets/${contacts}/records`, {
    records: [{ id: rows[0].id, values: { firstName: "Ada", age: 36 } }],
  });
  await admin(base, "DELETE", `/_sim/sheets/${contacts}/records`, { ids: [rows[1].id] });
  for (const eventShape of ["count", "dataUrl", "versionId"]) {
    await admin(base, "POST", `/_sim/sheets/${companies}/records`, { count: 1, eventShape });
  }
  await admin(base, "DELETE", `/_sim/sheets/${companies}/records`, {
    ids: [(await admin(base, "GET", `/_sim/sheets/${companies}/records`))[0].id],
    eventShape: "count",
  });
  const multi = await admin(base, "POST", "/_sim/submit", {
    workbookId: submitted.workbookId,
    sheetSlug: "contacts",
    parts: 2,
    contextIds: false,
  });
  const adminJob = await admin(base, "POST", "/_sim/jobs", { workbookId: "us_wb_contract" });

  // Events: the list with and without parameters, one event, an ack.
  const events = await call(base, "GET", "/v1/events?pageSize=100", { endpoint: "GET /v1/events" });
  check("GET /v1/events?pageSize=100", "ListAllEventsResponse", events);
  const first = events.data[0];
  check(
    "GET /v1/events",
    "ListAllEventsResponse",
    await call(base, "GET", "/v1/events", { endpoint: "GET /v1/events" }),
  );
  const ack = await call(base, "POST", `/v1/events/${first.id}/ack`, {
    endpoint: "POST /v1/events/{id}/ack",
  });
  check("POST /v1/events/{id}/ack", "Success", ack);
  const since = encodeURIComponent(first.createdAt);
  const listed = await call(
    base,
    "GET",
    `/v1/events?since=${since}&pageSize=5&pageNumber=2&includeAcknowledged=true`,
    { endpoint: "GET /v1/events" },
  );
  check("GET /v1/events?since&pageSize&pageNumber&includeAcknowledged", "ListAllEventsResponse", listed);
  const all = await call(base, "GET", "/v1/events?pageSize=100&includeAcknowledged=true", {
    endpoint: "GET /v1/events",
  });
  check("GET /v1/events?includeAcknowledged=true", "ListAllEventsResponse", all);
  if (!all.data.some((event) => event.acknowledgedAt)) {
    failures.push("GET /v1/events?includeAcknowledged=true lists no acknowledged event");
  }
  for (const event of all.data) {
    check(
      `GET /v1/events/{id} (${event.topic})`,
      "EventResponse",
      await call(base, "GET", `/v1/events/${event.id}`, { endpoint: "GET /v1/events/{id}" }),
    );
  }

  // Workbook, sheets, counts, records.
  const workbook = submitted.workbookId;
  check(
    "GET /v1/workbooks/{id}",
    "WorkbookResponse",
    await call(base, "GET", `/v1/workbooks/${workbook}`, { endpoint: "GET /v1/workbooks/{id}" }),
  );
  check(
    "GET /v1/sheets?workbookId=",
    "ListSheetsResponse",
    await call(base, "GET", `/v1/sheets?workbookId=${workbook}`, { endpoint: "GET /v1/sheets" }),
  );
  for (const sheet of [contacts, companies]) {
    check(
      "GET /v1/sheets/{id}",
      "SheetResponse",
      await call(base, "GET", `/v1/sheets/${sheet}`, { endpoint: "GET /v1/sheets/{id}" }),
    );
    check(
      "GET /v1/sheets/{id}/counts",
      "RecordCountsResponse",
      await call(base, "GET", `/v1/sheets/${sheet}/counts`, {
        endpoint: "GET /v1/sheets/{id}/counts",
      }),
    );
  }
  const records = (query, what) =>
    call(base, "GET", `/v1/sheets/${contacts}/records${query}`, {
      endpoint: "GET /v1/sheets/{id}/records",
    }).then((body) => check(`GET /v1/sheets/{id}/records${what}`, "GetRecordsResponse", body));
  await records("", "");
  await records("?pageSize=10&pageNumber=2", "?pageSize&pageNumber");
  await records(`?${added.recordIds.map((id) => `ids=${id}`).join("&")}&ids=${rows[0].id}`, "?ids=&ids=");
  await records(`?commitId=${edited.commitId}`, "?commitId=");
  await records(`?sinceCommitId=${added.commitId}`, "?sinceCommitId=");

  // Jobs: the exact bodies flatsync sends, checked as requests too.
  const ackBody = { info: "Accepted by flatsync", progress: 0 };
  const completeBody = {
    outcome: { acknowledge: true, heading: "Success", message: "Delivered 40 records" },
    info: "Delivered 40 records",
  };
  const failBody = {
    info: "Delivery failed: sink warehouse refused",
    outcome: { acknowledge: true, message: "Delivery failed: sink warehouse refused" },
  };
  const progressBody = { info: "Delivered 20 of 40 records", progress: 50 };
  const updateBody = { progress: 75, info: "Delivered 30 of 40 records", metadata: { by: "contract" } };
  check("request of POST /v1/jobs/{id}/ack", "JobAckDetails", ackBody);
  check("request of POST /v1/jobs/{id}/ack (progress)", "JobAckDetails", progressBody);
  check("request of POST /v1/jobs/{id}/complete", "JobCompleteDetails", completeBody);
  check("request of POST /v1/jobs/{id}/fail", "JobCompleteDetails", failBody);
  check("request of PATCH /v1/jobs/{id}", "JobUpdate", updateBody);

  const job = (method, path, endpoint, body) =>
    call(base, method, path, { endpoint, body }).then((answer) =>
      check(`${endpoint}`, "JobResponse", answer),
    );
  const done = submitted.jobId;
  await job("GET", `/v1/jobs/${done}`, "GET /v1/jobs/{id}");
  await job("POST", `/v1/jobs/${done}/ack`, "POST /v1/jobs/{id}/ack", ackBody);
  await job("POST", `/v1/jobs/${done}/ack`, "POST /v1/jobs/{id}/ack", progressBody);
  await job("PATCH", `/v1/jobs/${done}`, "PATCH /v1/jobs/{id}", updateBody);
  await job("POST", `/v1/jobs/${done}/complete`, "POST /v1/jobs/{id}/complete", completeBody);
  await job("GET", `/v1/jobs/${done}`, "GET /v1/jobs/{id}");
  const failed = multi.parts[0].jobId;
  await job("POST", `/v1/jobs/${failed}/ack`, "POST /v1/jobs/{id}/ack", ackBody);
  await job("POST", `/v1/jobs/${failed}/fail`, "POST /v1/jobs/{id}/fail", failBody);
  await job("GET", `/v1/jobs/${failed}`, "GET /v1/jobs/{id}");
  await job("GET", `/v1/jobs/${multi.jobId}`, "GET /v1/jobs/{id}");
  await job("GET", `/v1/jobs/${adminJob.jobId}`, "GET /v1/jobs/{id}");
  check(
    "GET /v1/jobs",
    "ListJobsResponse",
    await call(base, "GET", "/v1/jobs?pageSize=50", { endpoint: "GET /v1/jobs" }),
  );

  // Unknown jobs: 404 with the error envelope, on every job endpoint.
  const unknown = "us_jb_contractNope";
  for (const [method, path, body, endpoint] of [
    ["GET", `/v1/jobs/${unknown}`, undefined, "GET /v1/jobs/{id}"],
    ["POST", `/v1/jobs/${unknown}/ack`, ackBody, "POST /v1/jobs/{id}/ack"],
    ["POST", `/v1/jobs/${unknown}/complete`, completeBody, "POST /v1/jobs/{id}/complete"],
    ["POST", `/v1/jobs/${unknown}/fail`, failBody, "POST /v1/jobs/{id}/fail"],
    ["PATCH", `/v1/jobs/${unknown}`, updateBody, "PATCH /v1/jobs/{id}"],
  ]) {
    const answer = await call(base, method, path, { endpoint, body, expect: 404 });
    check(`${endpoint} (unknown job, 404)`, "Errors", answer);
    if (answer?.errors?.[0]?.key !== "jobId") {
      failures.push(`${endpoint} (unknown job, 404): errors[0].key is not jobId: ${JSON.stringify(answer)}`);
    }
  }

  // The events the job changes emitted (job:completed, job:failed) are Platform events too.
  check(
    "GET /v1/events (after the jobs)",
    "ListAllEventsResponse",
    await call(base, "GET", "/v1/events?pageSize=100&includeAcknowledged=true&pageNumber=1", {
      endpoint: "GET /v1/events",
    }),
  );
}

main().catch((error) => {
  console.error(`contract: ${error.message}`);
  console.log(
    `contract: ${endpoints.size} endpoints, ${bodiesChecked} bodies checked, ${failures.length + 1} failures`,
  );
  process.exit(1);
});
