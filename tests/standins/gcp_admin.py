#!/usr/bin/env python3
"""Local stand-in for the Google Cloud admin APIs `studio gcp setup` calls.

Why this exists: Google ships no emulator for Service Usage, Resource Manager, IAM (service
accounts, policies, workload identity pools) or Cloud Logging sinks. This server implements
the slice the set-up uses, in the REST shapes Google documents, and forwards what real
emulators serve to them: Pub/Sub topics and subscriptions to Google's Pub/Sub emulator
(--pubsub), buckets and objects to fake-gcs-server (--gcs). Only what those emulators lack is
answered here: IAM policies of topics and buckets (neither emulator has IAM) and a bucket's
lifecycle and project number when fake-gcs-server drops them.

Real behaviours it reproduces, because code that passes here must also work on Google:
  * Projects are known by id and number (--project ID=NUMBER); another project -> 403.
  * A service that is not enabled answers 403 PERMISSION_DENIED with reason SERVICE_DISABLED
    ("... API has not been used in project N before or it is disabled"), as every Google API
    does. A new project has serviceusage and storage enabled (Google enables a default set).
    cloud.google.com/service-usage/docs/enabled-service#default
  * Long-running operations answer `{"name"}` alone while running (proto3 JSON leaves out
    `done: false`, and "some services might not provide such metadata").
  * services.batchEnable is a long-running operation: it returns `operations/...` not done;
    the services are enabled when a GET of the operation answers done (the second GET).
    Enabling then takes time to reach the service: its first call after enabling still
    answers SERVICE_DISABLED ("wait a few minutes for the action to propagate").
  * Service accounts: accountId 6-30 characters [a-z][-a-z0-9]*[a-z0-9]; 409 on a second
    create; a uniqueId of 21 digits. A new account is not visible to IAM policies at once:
    the first setIamPolicy naming it answers 400 "Service account X does not exist."
    cloud.google.com/iam/docs/service-accounts-create#creating ("eventually consistent")
  * IAM policies (project, service account, topic, bucket): getIamPolicy returns an etag;
    setIamPolicy with a stale etag -> 409 ABORTED; a binding with a condition needs
    version 3 -> 400; a member serviceAccount:X that does not exist -> 400. Pub/Sub's service
    agent (service-N@gcp-sa-pubsub) exists once made "just in time": here, only after Service
    Usage v1beta1 generateServiceIdentity; Logging's writer identities once their sink does.
    A new account's own policy is not readable at once (404 the first time); its
    getIamPolicy takes no body ("The request body must be empty"); Pub/Sub's is a GET.
  * Workload identity pools and providers: ids 4-32 [a-z0-9-], not starting with "gcp-";
    create is a long-running operation (done on its second GET); 409 on a second create;
    providers PATCH with updateMask (a field outside it -> 400).
  * Log sinks: create/update with uniqueWriterIdentity=true give a writerIdentity; the
    destination must be pubsub.googleapis.com/projects/P/topics/T (the topic need not exist).
  * Compute regions.get lists the region's zones (us-central1: a, b, c, f) and its quotas (a
    new project's: 24 CPUS, no GPUs); public images of debian-cloud (images.getFromFamily).

Control: GET /_standin/calls (every request but control ones: method, path, query),
GET /_standin/state (everything held).

Usage: python3 gcp_admin.py --listen 127.0.0.1:0 --pubsub URL --gcs URL --project ID=NUMBER
(prints `listening on http://HOST:PORT`)
"""

import argparse
import hashlib
import json
import random
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_ENABLED = ["serviceusage.googleapis.com", "storage.googleapis.com"]
REGIONS = {
    "us-central1": ["a", "b", "c", "f"],
    "europe-west4": ["a", "b", "c"],
    "us-east1": ["b", "c", "d"],
}
PUBLIC_IMAGES = {"debian-cloud": {
    "family/debian-12": {"name": "debian-12-bookworm-v20261110", "family": "debian-12", "architecture": "X86_64", "status": "READY"},
}}
LOCK = threading.Lock()


class ApiError(Exception):
    def __init__(self, code, status, message, reason=None):
        super().__init__(message)
        self.code, self.status, self.message, self.reason = code, status, message, reason

    def body(self):
        err = {"code": self.code, "message": self.message, "status": self.status}
        if self.reason:
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.reason}]
        return {"error": err}


class State:
    def __init__(self, projects):
        self.projects = projects  # id -> number
        self.enabled = {p: set(DEFAULT_ENABLED) for p in projects}
        self.propagating = {p: set() for p in projects}  # enabled, first call still refused
        self.operations = {}  # name -> {"gets": n, "apply": fn, "response": ...}
        self.accounts = {}  # email -> account
        self.fresh = set()  # emails a policy has not seen yet
        self.unread = set()  # accounts whose policy is not readable yet
        self.agents = set()  # service agents made (generateServiceIdentity)
        self.policies = {}  # resource key -> policy
        self.pools = {}
        self.providers = {}
        self.sinks = {}
        self.writers = set()
        self.buckets = {}  # name -> what fake-gcs-server may not keep (lifecycle, projectNumber)
        self.calls = []

    def project(self, p):
        if p not in self.projects and p not in self.projects.values():
            raise ApiError(403, "PERMISSION_DENIED", f"Permission denied on resource project {p}.")
        return p if p in self.projects else next(k for k, v in self.projects.items() if v == p)

    def require(self, p, service):
        p = self.project(p)
        if service in self.propagating[p]:
            self.propagating[p].discard(service)
            raise ApiError(403, "PERMISSION_DENIED", self.disabled_message(p, service) +
                           " If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry.",
                           "SERVICE_DISABLED")
        if service not in self.enabled[p]:
            raise ApiError(403, "PERMISSION_DENIED", self.disabled_message(p, service), "SERVICE_DISABLED")
        return p

    def disabled_message(self, p, service):
        return (f"{service} API has not been used in project {self.projects[p]} before or it is disabled. "
                f"Enable it by visiting https://console.developers.google.com/apis/api/{service}/overview?project={self.projects[p]}")

    def operation(self, name, apply, response=None):
        # A running operation in proto3 JSON: `done: false` is left out, and
        # "some services might not provide such metadata".
        self.operations[name] = {"gets": 0, "apply": apply, "response": response}
        return {"name": name}

    def get_operation(self, name):
        op = self.operations.get(name)
        if op is None:
            raise ApiError(404, "NOT_FOUND", f"Operation {name} not found.")
        op["gets"] += 1
        if op["gets"] < 2:
            return {"name": name}
        if op["apply"]:
            op["response"] = op["apply"]()
            op["apply"] = None
        out = {"name": name, "done": True}
        if op["response"] is not None:
            out["response"] = op["response"]
        return out

    def member_exists(self, m):
        if m.startswith(("user:", "group:", "domain:", "principalSet:", "principal:")):
            return True
        if not m.startswith("serviceAccount:"):
            return False
        email = m.split(":", 1)[1]
        if email in self.accounts or email in self.writers:
            return True
        # Service agents exist "just in time": Pub/Sub's once asked for.
        return email in self.agents

    def get_policy(self, key):
        return json.loads(json.dumps(self.policies.get(key, {"version": 1, "etag": "ACAB"})))

    def set_policy(self, key, policy):
        current = self.policies.get(key, {"version": 1, "etag": "ACAB"})
        if policy.get("etag") and policy["etag"] != current["etag"]:
            raise ApiError(409, "ABORTED", "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.")
        bindings = policy.get("bindings", [])
        for b in bindings:
            if "condition" in b and policy.get("version", 1) < 3:
                raise ApiError(400, "INVALID_ARGUMENT", "Conditional bindings require policy version 3.")
            for m in b.get("members", []):
                if not self.member_exists(m):
                    raise ApiError(400, "INVALID_ARGUMENT", f"Service account {m.split(':', 1)[-1]} does not exist.")
                email = m.split(":", 1)[-1]
                if email in self.fresh:
                    self.fresh.discard(email)
                    raise ApiError(400, "INVALID_ARGUMENT", f"Service account {email} does not exist.")
        new = {"version": policy.get("version", 1), "etag": hashlib.sha1(json.dumps(policy, sort_keys=True).encode()).hexdigest()[:12],
               "bindings": bindings}
        self.policies[key] = new
        return new


S = None
ARGS = None


def check_id(value, lo, hi, what):
    if not re.fullmatch(r"[a-z0-9-]{%d,%d}" % (lo, hi), value or "") or value.startswith("gcp-"):
        raise ApiError(400, "INVALID_ARGUMENT", f"{what} '{value}' must be {lo}-{hi} characters of [a-z0-9-], not starting with gcp-.")


def services(m, p, q, body):
    p = S.project(p)
    if m == "GET":
        items = [{"name": f"projects/{S.projects[p]}/services/{s}", "config": {"name": s}, "state": "ENABLED",
                  "parent": f"projects/{S.projects[p]}"} for s in sorted(S.enabled[p])]
        return {"services": items}
    raise ApiError(405, "METHOD_NOT_ALLOWED", "no")


def batch_enable(m, p, q, body):
    p = S.project(p)
    ids = body.get("serviceIds", [])
    if not ids or len(ids) > 20:
        raise ApiError(400, "INVALID_ARGUMENT", "serviceIds: between 1 and 20 services.")

    def apply():
        for s in ids:
            if s not in S.enabled[p]:
                S.enabled[p].add(s)
                S.propagating[p].add(s)
        return {"@type": "type.googleapis.com/google.api.serviceusage.v1.BatchEnableServicesResponse"}

    return S.operation(f"operations/acf.p2-{S.projects[p]}-{random.randrange(10**9)}", apply)


def generate_identity(m, p, service, q, body):
    p = S.project(p)
    if m != "POST" or service != "pubsub.googleapis.com":
        raise ApiError(400, "INVALID_ARGUMENT", f"this stand-in makes Pub/Sub's agent only, not {service}")
    email = f"service-{S.projects[p]}@gcp-sa-pubsub.iam.gserviceaccount.com"

    def apply():
        S.agents.add(email)
        return {"@type": "type.googleapis.com/google.api.serviceusage.v1beta1.ServiceIdentity",
                "email": email, "uniqueId": str(random.randrange(10**20, 10**21))}

    return S.operation(f"operations/finsi.{random.randrange(10**9)}", apply)


def project_get(m, p, q, body):
    p = S.require(p, "cloudresourcemanager.googleapis.com")
    return {"projectId": p, "projectNumber": S.projects[p], "lifecycleState": "ACTIVE"}


def project_policy(m, p, verb, q, body):
    p = S.require(p, "cloudresourcemanager.googleapis.com")
    if verb == "getIamPolicy":
        return S.get_policy(f"project/{p}")
    return S.set_policy(f"project/{p}", body.get("policy", {}))


def accounts(m, p, q, body):
    p = S.require(p, "iam.googleapis.com")
    if m != "POST":
        raise ApiError(405, "METHOD_NOT_ALLOWED", "no")
    aid = body.get("accountId", "")
    if not re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", aid):
        raise ApiError(400, "INVALID_ARGUMENT", f"accountId {aid} does not match [a-z]([-a-z0-9]*[a-z0-9]), 6-30 characters.")
    email = f"{aid}@{p}.iam.gserviceaccount.com"
    if email in S.accounts:
        raise ApiError(409, "ALREADY_EXISTS", f"Service account {aid} already exists within project projects/{p}.")
    acct = {"name": f"projects/{p}/serviceAccounts/{email}", "projectId": p, "email": email,
            "uniqueId": str(random.randrange(10**20, 10**21)),
            "displayName": body.get("serviceAccount", {}).get("displayName", "")}
    S.accounts[email] = acct
    S.fresh.add(email)
    S.unread.add(email)
    return acct


def account(m, p, email, verb, q, body):
    p = S.require(p, "iam.googleapis.com")
    if email not in S.accounts:
        raise ApiError(404, "NOT_FOUND", f"Unknown service account {email}.")
    if verb is None and m == "GET":
        return S.accounts[email]
    if verb == "getIamPolicy":
        # "The request body must be empty"; the version is a query parameter.
        if body:
            raise ApiError(400, "INVALID_ARGUMENT", "Invalid JSON payload received. The request body must be empty.")
        if email in S.unread:
            S.unread.discard(email)
            raise ApiError(404, "NOT_FOUND", f"Unknown service account {email}.")
        return S.get_policy(f"sa/{email}")
    if verb == "setIamPolicy":
        return S.set_policy(f"sa/{email}", body.get("policy", {}))
    raise ApiError(405, "METHOD_NOT_ALLOWED", "no")


def pools(m, p, q, body):
    p = S.require(p, "iam.googleapis.com")
    pid = q.get("workloadIdentityPoolId", [""])[0]
    check_id(pid, 4, 32, "workloadIdentityPoolId")
    name = f"projects/{S.projects[p]}/locations/global/workloadIdentityPools/{pid}"
    if (p, pid) in S.pools:
        raise ApiError(409, "ALREADY_EXISTS", f"Requested entity already exists: {name}")
    S.pools[(p, pid)] = None  # being made

    def apply():
        S.pools[(p, pid)] = {"name": name, "displayName": body.get("displayName", ""), "state": "ACTIVE",
                             "description": body.get("description", "")}
        return S.pools[(p, pid)]

    return S.operation(f"{name}/operations/{random.randrange(10**12)}", apply)


def pool(m, p, pid, q, body):
    p = S.require(p, "iam.googleapis.com")
    got = S.pools.get((p, pid))
    if got is None:
        raise ApiError(404, "NOT_FOUND", f"Requested entity was not found: pool {pid}")
    return got


def providers(m, p, pid, q, body):
    pool(m, p, pid, q, body)
    p = S.project(p)
    vid = q.get("workloadIdentityPoolProviderId", [""])[0]
    check_id(vid, 4, 32, "workloadIdentityPoolProviderId")
    if (p, pid, vid) in S.providers:
        raise ApiError(409, "ALREADY_EXISTS", f"Requested entity already exists: provider {vid}")
    check_provider(body)
    name = f"projects/{S.projects[p]}/locations/global/workloadIdentityPools/{pid}/providers/{vid}"
    S.providers[(p, pid, vid)] = None

    def apply():
        S.providers[(p, pid, vid)] = dict(body, name=name, state="ACTIVE")
        return S.providers[(p, pid, vid)]

    return S.operation(f"{name}/operations/{random.randrange(10**12)}", apply)


def check_provider(body):
    if not re.fullmatch(r"\d{12}", str(body.get("aws", {}).get("accountId", ""))):
        raise ApiError(400, "INVALID_ARGUMENT", "aws.accountId must be a 12-digit AWS account id.")
    if "google.subject" not in body.get("attributeMapping", {"google.subject": 1}):
        raise ApiError(400, "INVALID_ARGUMENT", "attributeMapping must map google.subject.")


def provider(m, p, pid, vid, q, body):
    pool(m, p, pid, q, body)
    p = S.project(p)
    got = S.providers.get((p, pid, vid))
    if got is None:
        raise ApiError(404, "NOT_FOUND", f"Requested entity was not found: provider {vid}")
    if m == "GET":
        return got
    if m == "PATCH":
        mask = [f for f in q.get("updateMask", [""])[0].split(",") if f]
        for k in body:
            if k not in mask:
                raise ApiError(400, "INVALID_ARGUMENT", f"field {k} is not in updateMask {mask}")
        check_provider(dict(got, **body))
        new = dict(got)
        new.update({k: body[k] for k in mask if k in body})
        return S.operation(f"{got['name']}/operations/{random.randrange(10**12)}",
                           lambda: S.providers.__setitem__((p, pid, vid), new) or new)
    raise ApiError(405, "METHOD_NOT_ALLOWED", "no")


def sinks(m, p, name, q, body):
    p = S.require(p, "logging.googleapis.com")
    if m == "GET":
        got = S.sinks.get((p, name))
        if got is None:
            raise ApiError(404, "NOT_FOUND", f"Sink {name} does not exist")
        return got
    if q.get("uniqueWriterIdentity", ["false"])[0] != "true":
        raise ApiError(400, "INVALID_ARGUMENT", "this stand-in expects uniqueWriterIdentity=true")
    dest = body.get("destination", "")
    if not re.fullmatch(r"pubsub\.googleapis\.com/projects/[^/]+/topics/[^/]+", dest):
        raise ApiError(400, "INVALID_ARGUMENT", f"Invalid destination {dest}")
    if m == "POST":
        name = body.get("name", "")
        if (p, name) in S.sinks:
            raise ApiError(409, "ALREADY_EXISTS", f"Sink {name} already exists")
        writer = f"serviceAccount:service-{S.projects[p]}@gcp-sa-logging.iam.gserviceaccount.com"
        S.writers.add(writer.split(":", 1)[1])
        S.sinks[(p, name)] = {"name": name, "destination": dest, "filter": body.get("filter", ""), "writerIdentity": writer}
        return S.sinks[(p, name)]
    if m == "PUT":
        got = S.sinks.get((p, name))
        if got is None:
            raise ApiError(404, "NOT_FOUND", f"Sink {name} does not exist")
        for f in q.get("updateMask", [""])[0].split(","):
            if f in body:
                got[f] = body[f]
        return got
    raise ApiError(405, "METHOD_NOT_ALLOWED", "no")


def region(m, p, r, q, body):
    p = S.require(p, "compute.googleapis.com")
    if r not in REGIONS:
        raise ApiError(404, "NOT_FOUND", f"The resource 'projects/{p}/regions/{r}' was not found")
    # A new project's quota: some CPUs, no GPUs (GPU quota is asked for).
    quotas = [{"metric": "CPUS", "limit": 24.0, "usage": 0.0},
              {"metric": "NVIDIA_T4_GPUS", "limit": 0.0, "usage": 0.0},
              {"metric": "NVIDIA_L4_GPUS", "limit": 0.0, "usage": 0.0}]
    return {"name": r, "quotas": quotas,
            "zones": [f"https://www.googleapis.com/compute/v1/projects/{p}/zones/{r}-{z}" for z in REGIONS[r]]}


def public_image(m, owner, family_or_name, q, body):
    """Public images (images.get / images.getFromFamily of debian-cloud)."""
    if owner not in PUBLIC_IMAGES or family_or_name not in PUBLIC_IMAGES[owner]:
        raise ApiError(404, "NOT_FOUND", f"The resource 'projects/{owner}/global/images/{family_or_name}' was not found")
    return PUBLIC_IMAGES[owner][family_or_name]


def topic_policy(m, p, topic, verb, q, body):
    p = S.require(p, "pubsub.googleapis.com")
    if verb == "getIamPolicy" and m != "GET":
        raise ApiError(404, "NOT_FOUND", f"{m} {verb}: Pub/Sub's getIamPolicy is a GET")
    forward("GET", f"/v1/projects/{p}/topics/{topic}", "", None)  # 404 when it does not exist
    if verb == "getIamPolicy":
        return S.get_policy(f"topic/{p}/{topic}")
    return S.set_policy(f"topic/{p}/{topic}", body.get("policy", {}))


def bucket_policy(m, b, q, body):
    meta = S.buckets.get(b)
    if meta is None:
        raise ApiError(404, "NOT_FOUND", f"The specified bucket does not exist: {b}")
    S.require(meta["project"], "storage.googleapis.com")
    if m == "GET":
        return dict(S.get_policy(f"bucket/{b}"), kind="storage#policy", resourceId=f"projects/_/buckets/{b}")
    return S.set_policy(f"bucket/{b}", body)


def forward(method, path, query, data, base=None):
    """The request as the emulator answers it; raises ApiError for an error answer."""
    base = base or ARGS.pubsub
    url = base.rstrip("/") + path + (("?" + query) if query else "")
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return json.loads(raw) if raw.strip() else {}
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            err = json.loads(raw)["error"]
            raise ApiError(e.code, err.get("status", ""), err.get("message", ""))
        except (ValueError, KeyError, TypeError):
            raise ApiError(e.code, "", raw.decode(errors="replace")[:300])


def storage(m, path, query, raw, body):
    """Buckets and objects: fake-gcs-server, with what it drops kept here."""
    q = urllib.parse.parse_qs(query)
    bucket_m = re.fullmatch(r"/storage/v1/b/([^/]+)", path)
    if path == "/storage/v1/b" and m == "POST":
        p = S.require(q.get("project", [""])[0], "storage.googleapis.com")
        out = forward(m, path, query, raw, ARGS.gcs)
        S.buckets[body["name"]] = {"project": p, "lifecycle": body.get("lifecycle")}
        return with_meta(out)
    if bucket_m:
        b = urllib.parse.unquote(bucket_m.group(1))
        if b in S.buckets:
            S.require(S.buckets[b]["project"], "storage.googleapis.com")
        if m == "PATCH" and "lifecycle" in body and b in S.buckets:
            S.buckets[b]["lifecycle"] = body["lifecycle"]
            rest = {k: v for k, v in body.items() if k != "lifecycle"}
            if not rest:
                return with_meta(forward("GET", path, "", None, ARGS.gcs))
            raw = json.dumps(rest).encode()
        return with_meta(forward(m, path, query, raw, ARGS.gcs))
    return forward(m, path, query, raw, ARGS.gcs)


def with_meta(bucket):
    meta = S.buckets.get(bucket.get("name"))
    if meta:
        bucket["projectNumber"] = S.projects[meta["project"]]
        if meta.get("lifecycle") is not None:
            bucket["lifecycle"] = meta["lifecycle"]
    return bucket


ROUTES = [
    (r"/v1/projects/([^/]+)/services", services),
    (r"/v1/projects/([^/:]+)/services:batchEnable", batch_enable),
    (r"/v1beta1/projects/([^/]+)/services/([^/:]+):generateServiceIdentity", generate_identity),
    (r"/v1/projects/([^/:]+)", project_get),
    (r"/v1/projects/([^/:]+):(getIamPolicy|setIamPolicy)", project_policy),
    (r"/v1/projects/([^/]+)/serviceAccounts", accounts),
    (r"/v1/projects/([^/]+)/serviceAccounts/([^/:]+)(?::(getIamPolicy|setIamPolicy))?", account),
    (r"/v1/projects/([^/]+)/locations/global/workloadIdentityPools", pools),
    (r"/v1/projects/([^/]+)/locations/global/workloadIdentityPools/([^/:]+)", pool),
    (r"/v1/projects/([^/]+)/locations/global/workloadIdentityPools/([^/]+)/providers", providers),
    (r"/v1/projects/([^/]+)/locations/global/workloadIdentityPools/([^/]+)/providers/([^/:]+)", provider),
    (r"/v2/projects/([^/]+)/sinks(?:/([^/]+))?", sinks),
    (r"/compute/v1/projects/([^/]+)/regions/([^/]+)", region),
    (r"/compute/v1/projects/([^/]+)/global/images/(.+)", public_image),
    (r"/v1/projects/([^/]+)/topics/([^/:]+):(getIamPolicy|setIamPolicy)", topic_policy),
    (r"/storage/v1/b/([^/]+)/iam", bucket_policy),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        u = urllib.parse.urlsplit(self.path)
        path, query = urllib.parse.unquote(u.path), u.query
        q = urllib.parse.parse_qs(query)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else None
        m = self.command
        with LOCK:
            if path == "/_standin/calls":
                return self.answer(200, {"calls": S.calls})
            if path == "/_standin/state":
                return self.answer(200, {"enabled": {k: sorted(v) for k, v in S.enabled.items()},
                                         "accounts": S.accounts,
                                         "policies": S.policies,
                                         "pools": {"/".join(k): v for k, v in S.pools.items()},
                                         "providers": {"/".join(k): v for k, v in S.providers.items()},
                                         "sinks": {"/".join(k): v for k, v in S.sinks.items()},
                                         "buckets": S.buckets})
            S.calls.append({"method": m, "path": path, "query": query})
            try:
                body = json.loads(raw) if raw and not path.startswith("/upload/") else {}
                op = re.fullmatch(r"/(v1|v1beta1)/((?:projects/.+/)?operations/[^/]+)", path)
                if op and m == "GET":
                    return self.answer(200, S.get_operation(op.group(2)))
                for pattern, fn in ROUTES:
                    mt = re.fullmatch(pattern, path)
                    if mt:
                        return self.answer(200, fn(m, *mt.groups(), q, body))
                if path.startswith(("/storage/", "/upload/storage/", "/download/storage/")):
                    return self.answer(200, storage(m, path, query, raw, body))
                pubsub = re.fullmatch(r"/v1/projects/([^/]+)/(topics|subscriptions)/.+", path)
                if pubsub:
                    S.require(pubsub.group(1), "pubsub.googleapis.com")
                    return self.answer(200, forward(m, u.path, query, raw))
                raise ApiError(404, "NOT_FOUND", f"the stand-in serves no {m} {path}")
            except ApiError as e:
                return self.answer(e.code, e.body())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


def main():
    global S, ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--pubsub", required=True)
    ap.add_argument("--gcs", required=True)
    ap.add_argument("--project", action="append", default=[], help="ID=NUMBER")
    ARGS = ap.parse_args()
    S = State(dict(p.split("=", 1) for p in ARGS.project))
    host, port = ARGS.listen.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"listening on http://{host}:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
