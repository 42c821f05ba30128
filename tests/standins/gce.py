#!/usr/bin/env python3
"""Local stand-in for the Google Compute Engine REST API v1 and the GCE metadata server.

Why this exists: Google ships no Compute Engine emulator, so integration tests point the
official Rust client (`google-cloud-compute-v1`, anonymous credentials) at this server
instead. It implements only the slice of Compute the project uses -- instance templates,
images, zonal managed instance groups (MIGs), instances (get, setLabels, delete), zonal/global
operations -- plus a per-VM metadata server and a few `/_standin/*` control endpoints.

Real behaviours it reproduces, because code that passes here must also work on GCE:
  * Long-running operations: every mutation returns a RUNNING Operation whose effect is
    invisible until the operation is DONE. It turns DONE on its second GET, or at once on
    POST .../operations/{op}/wait. Errors Compute reports synchronously (notFound,
    alreadyExists, resourceInUseByAnotherResource, invalid) are raised at the call; an
    effect that can no longer be applied when the operation completes is reported in
    the Operation's `error`/`httpErrorStatusCode` fields, as Compute does.
  * alreadyExists (409) on inserting a name that exists or is being inserted.
  * Deleting an instance template still used by a group -> 400 resourceInUseByAnotherResource.
  * Inserting a group whose template does not exist -> 404 at the call.
  * deleteInstances removes the instances AND lowers targetSize by the number removed.
  * MIG reconciliation: the group converges on targetSize. New instances are named
    `{baseInstanceName}-xxxx` and show as PROVISIONING/CREATING the first time each view
    (listManagedInstances, instances.get, group get) sees them; resizing down deletes the
    newest instances.
  * Instance labels: each instance starts with a copy of its template's properties.labels and
    carries a `labelFingerprint` (base64 of 8 bytes, a hash of the labels, so it changes
    whenever they do). setLabels with a missing or stale fingerprint -> 412 conditionNotMet
    at the call; bad keys/values -> 400 invalid; otherwise the whole map is replaced when the
    operation is DONE (if the labels changed meanwhile, the Operation fails with 412).
    `creationTimestamp` is RFC 3339 in Pacific time with an offset, like real Compute.
  * instances.delete: the instance vanishes when the operation is DONE; unknown -> 404 at the
    call. Unlike deleteInstances it leaves the group's targetSize alone, so the group
    creates the VM again under the same name, with a new numeric id (as after a reclaim).
  * Spot reclamation: /_standin/preempt flips the metadata `instance/preempted` to TRUE,
    /_standin/reclaim removes the VM; if the template is SPOT or has
    instanceTerminationAction DELETE the group keeps its targetSize and recreates the VM
    under the same name with a new id (otherwise the group shrinks by one).
  * Errors use Compute's JSON shape: {"error": {"code", "message", "errors": [{"message",
    "domain": "global", "reason"}]}}; int64 fields (ids, diskSizeGb) are JSON strings.

Metadata server: GET /vm/{instance}/computeMetadata/v1/{path} with `Metadata-Flavor: Google`.
Control: POST /_standin/images, /_standin/instances (a standalone VM from a template),
/_standin/preempt, /_standin/reclaim, /_standin/reset;
GET /_standin/state (dump of everything, including a log of every non-control request).

Usage: python3 gce.py --listen 127.0.0.1:0   (prints `listening on http://HOST:PORT`)
"""

import argparse
import base64
import copy
import datetime
import hashlib
import json
import random
import re
import signal
import string
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

API = "https://www.googleapis.com/compute/v1"
PROJECT_NUMBER = "123456789"
NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# Template reference: full URL, `projects/P/global/...` or `global/instanceTemplates/N`.
TEMPLATE_REF_RE = re.compile(r"(?:^|/)(?:projects/([^/]+)/)?global/instanceTemplates/([^/?#]+)$")
# Instance reference: full URL, `projects/P/zones/Z/instances/N`, `zones/Z/instances/N` or N.
INSTANCE_REF_RE = re.compile(r"(?:^|/)(?:projects/([^/]+)/)?(?:zones/([^/]+)/)?(?:instances/)?([^/]+)$")
# Label keys/values (the ASCII subset of what Compute accepts); at most 64 labels.
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
MAX_LABELS = 64
OP_ERROR_CODES = {"notFound": "RESOURCE_NOT_FOUND", "alreadyExists": "RESOURCE_ALREADY_EXISTS",
                  "resourceInUseByAnotherResource": "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE",
                  "invalid": "INVALID_FIELD_VALUE", "conditionNotMet": "CONDITION_NOT_MET"}
HTTP_MESSAGES = {400: "BAD REQUEST", 404: "NOT FOUND", 409: "CONFLICT", 412: "PRECONDITION FAILED"}
try:  # real Compute reports resource timestamps in US Pacific time, with the offset
    from zoneinfo import ZoneInfo
    PACIFIC = ZoneInfo("America/Los_Angeles")
except Exception:  # no tz database: fixed PST offset keeps the same shape
    PACIFIC = datetime.timezone(datetime.timedelta(hours=-8))


class ApiError(Exception):
    """An error answered in Compute's JSON shape (or recorded in a failed Operation)."""

    def __init__(self, code, reason, message):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self):
        return {"error": {"code": self.code, "message": self.message, "errors": [
            {"message": self.message, "domain": "global", "reason": self.reason}]}}


def not_found(res):
    return ApiError(404, "notFound", f"The resource '{res}' was not found")


def already_exists(res):
    return ApiError(409, "alreadyExists", f"The resource '{res}' already exists")


def invalid(message):
    return ApiError(400, "invalid", message)


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def compute_timestamp():
    """Like Compute's creationTimestamp: `2026-11-29T02:12:00.123-08:00`."""
    return datetime.datetime.now(PACIFIC).isoformat(timespec="milliseconds")


def new_id():
    """A Compute-style uint64 id, serialized as a string like the real API."""
    return str(random.randint(10 ** 17, 9 * 10 ** 18))


def rand_suffix(n):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def check_name(name, field="resource.name"):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise invalid(f"Invalid value for field '{field}': '{name or ''}'. Must be a match "
                      f"of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def label_fingerprint(labels):
    """base64 of 8 bytes hashed from the labels: equal labels, equal fingerprint."""
    canon = json.dumps(labels, sort_keys=True, separators=(",", ":")).encode()
    # URL-safe alphabet: the official client decodes Compute fingerprints so.
    return base64.urlsafe_b64encode(hashlib.sha256(canon).digest()[:8]).decode()


def condition_not_met():
    return ApiError(412, "conditionNotMet",
                    "Labels fingerprint either invalid or resource labels have changed")


def check_labels(labels):
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise invalid("Invalid value for field 'resource.labels': must be a map of strings.")
    if len(labels) > MAX_LABELS:
        raise invalid(f"Invalid value for field 'resource.labels': at most {MAX_LABELS} labels "
                      "are allowed.")
    for k, v in labels.items():
        if not LABEL_KEY_RE.fullmatch(k):
            raise invalid(f"Invalid value for field 'resource.labels': '{k}'. Label key must start "
                          "with a lowercase letter and contain only lowercase letters, numeric "
                          "characters, underscores and dashes, at most 63 characters long.")
        if not isinstance(v, str) or not LABEL_VALUE_RE.fullmatch(v):
            raise invalid(f"Invalid value for field 'resource.labels.{k}': '{v}'. Label value can "
                          "only contain lowercase letters, numeric characters, underscores and "
                          "dashes, at most 63 characters long.")
    return dict(labels)


class State:
    """All stand-in state. Every method is called with `lock` held."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.templates = {}   # (project, name) -> InstanceTemplate JSON
        self.images = {}      # (project, name) -> Image JSON
        self.groups = {}      # (project, zone, name) -> InstanceGroupManager JSON (stored parts)
        self.instances = {}   # (project, zone, name) -> internal instance record
        self.terminated = {}  # reclaimed instances, shown once as TERMINATED by instances.get
        self.recreate = {}    # group key -> names of its VMs to create again under their name
        self.reclaimed = []   # log of reclaimed instances
        self.operations = {}  # name -> {"json", "scope", "key", "apply", "polls"}
        self.requests = []    # request log (method, path, query, body)
        self.seq = 0          # instance creation order, used to pick the newest on scale-in

    # ---- operations -------------------------------------------------------------------

    def start_op(self, op_type, scope, target_link, key, apply):
        """Create a RUNNING operation; `apply` runs (and may raise ApiError) when it is DONE."""
        name = f"operation-{int(time.time() * 1000)}-{rand_suffix(12)}"
        base = f"{API}/projects/{scope[1]}/" + (f"zones/{scope[2]}" if scope[0] == "zone" else "global")
        op = {"kind": "compute#operation", "id": new_id(), "name": name,
              "operationType": op_type, "targetLink": target_link, "targetId": new_id(),
              "status": "RUNNING", "progress": 0, "insertTime": now_rfc3339(),
              "startTime": now_rfc3339(), "user": "standin@example.com",
              "selfLink": f"{base}/operations/{name}"}
        if scope[0] == "zone":
            op["zone"] = f"{API}/projects/{scope[1]}/zones/{scope[2]}"
        self.operations[name] = {"json": op, "scope": scope, "key": key, "apply": apply, "polls": 0}
        return op

    def pending(self, op_type, key):
        return any(o["json"]["status"] != "DONE" and o["json"]["operationType"] == op_type
                   and o["key"] == key for o in self.operations.values())

    def get_op(self, scope, name, wait):
        op = self.operations.get(name)
        if op is None or op["scope"] != scope:
            where = f"zones/{scope[2]}" if scope[0] == "zone" else "global"
            raise not_found(f"projects/{scope[1]}/{where}/operations/{name}")
        if op["json"]["status"] != "DONE":
            op["polls"] += 1
            if wait or op["polls"] >= 2:
                self.finish_op(op)
        return op["json"]

    def finish_op(self, op):
        js = op["json"]
        try:
            op["apply"]()
        except ApiError as e:
            js["error"] = {"errors": [{"code": OP_ERROR_CODES.get(e.reason, "INVALID"),
                                       "message": e.message}]}
            js["httpErrorStatusCode"] = e.code
            js["httpErrorMessage"] = HTTP_MESSAGES.get(e.code, "ERROR")
        js.update(status="DONE", progress=100, endTime=now_rfc3339())
        self.reconcile()

    # ---- instance templates and images ------------------------------------------------

    def template_users(self, project, name):
        return [f"projects/{g[0]}/zones/{g[1]}/instanceGroupManagers/{g[2]}"
                for g, grp in self.groups.items()
                if self.resolve_template(g[0], grp["instanceTemplate"]) == (project, name)]

    @staticmethod
    def resolve_template(project, ref):
        m = TEMPLATE_REF_RE.search(ref or "")
        return (m.group(1) or project, unquote(m.group(2))) if m else None

    def insert_template(self, p, body):
        name = body.get("name")
        check_name(name)
        res = f"projects/{p}/global/instanceTemplates/{name}"
        if (p, name) in self.templates or self.pending("insert", ("template", p, name)):
            raise already_exists(res)
        tpl = dict(body, kind="compute#instanceTemplate", id=new_id(),
                   creationTimestamp=now_rfc3339(), selfLink=f"{API}/{res}")

        def apply():
            if (p, name) in self.templates:
                raise already_exists(res)
            self.templates[(p, name)] = tpl
        return self.start_op("insert", ("global", p), tpl["selfLink"], ("template", p, name), apply)

    def get_template(self, p, name):
        if (p, name) not in self.templates:
            raise not_found(f"projects/{p}/global/instanceTemplates/{name}")
        return self.templates[(p, name)]

    def delete_template(self, p, name):
        tpl = self.get_template(p, name)

        def check():
            users = self.template_users(p, name)
            if users:
                raise ApiError(400, "resourceInUseByAnotherResource",
                               f"The instance_template resource 'projects/{p}/global/"
                               f"instanceTemplates/{name}' is already being used by '{users[0]}'")

        def apply():
            check()  # a group may have started using it while the operation was pending
            self.templates.pop((p, name), None)
        check()  # validate now: real Compute rejects an in-use template synchronously
        return self.start_op("delete", ("global", p), tpl["selfLink"], ("template", p, name), apply)

    def get_image(self, p, name=None, family=None):
        if family is not None:
            imgs = [i for (ip, _), i in self.images.items() if ip == p and i.get("family") == family]
            if not imgs:
                raise not_found(f"projects/{p}/global/images/family/{family}")
            return imgs[-1]  # the most recently registered image of the family
        if (p, name) not in self.images:
            raise not_found(f"projects/{p}/global/images/{name}")
        return self.images[(p, name)]

    # ---- managed instance groups ------------------------------------------------------

    def get_group(self, p, z, name):
        if (p, z, name) not in self.groups:
            raise not_found(f"projects/{p}/zones/{z}/instanceGroupManagers/{name}")
        return self.groups[(p, z, name)]

    def members(self, gkey):
        return sorted((i for i in self.instances.values() if i["group"] == gkey),
                      key=lambda i: i["seq"])

    def group_json(self, gkey):
        """The group as Compute shows it; counts instances not yet seen by this view as creating."""
        grp, members = self.get_group(*gkey), self.members(gkey)  # 404 if unknown
        creating = sum(1 for i in members if self.first_sight(i, "group"))
        actions = {a: 0 for a in ("abandoning", "creatingWithoutRetries", "deleting", "recreating",
                                  "refreshing", "restarting", "resuming", "starting", "stopping",
                                  "suspending", "verifying")}
        actions.update(creating=creating, none=len(members) - creating)
        stable = creating == 0 and len(members) == grp["targetSize"]
        return dict(grp, currentActions=actions,
                    status={"isStable": stable, "versionTarget": {"isReached": stable},
                            "allInstancesConfig": {"effective": True},
                            "stateful": {"hasStatefulConfig": False}})

    def insert_group(self, p, z, body):
        name = body.get("name")
        check_name(name)
        res = f"projects/{p}/zones/{z}/instanceGroupManagers/{name}"
        if (p, z, name) in self.groups or self.pending("insert", ("group", p, z, name)):
            raise already_exists(res)
        tref = body.get("instanceTemplate") or next(
            (v.get("instanceTemplate") for v in body.get("versions") or [] if isinstance(v, dict)), None)
        if not tref:
            raise invalid("Invalid value for field 'resource.instanceTemplate': ''. "
                          "An instance template is required.")
        tkey = self.resolve_template(p, tref)
        if tkey is None or tkey not in self.templates:
            shown = f"projects/{tkey[0]}/global/instanceTemplates/{tkey[1]}" if tkey else tref
            raise not_found(shown)
        base_name = body.get("baseInstanceName")
        check_name(base_name, "resource.baseInstanceName")
        try:
            target = int(body["targetSize"])
        except (KeyError, TypeError, ValueError):
            raise invalid("Invalid value for field 'resource.targetSize': "
                          f"'{body.get('targetSize', '')}'. Must be a non-negative integer.")
        if target < 0:
            raise invalid(f"Invalid value for field 'resource.targetSize': '{target}'.")
        zone_url = f"{API}/projects/{p}/zones/{z}"
        grp = dict(body, kind="compute#instanceGroupManager", id=new_id(),
                   creationTimestamp=now_rfc3339(), selfLink=f"{API}/{res}", zone=zone_url,
                   instanceTemplate=tref, baseInstanceName=base_name, targetSize=target,
                   instanceGroup=f"{zone_url}/instanceGroups/{name}",
                   fingerprint=b64url(random.randbytes(8)))

        def apply():
            if (p, z, name) in self.groups:
                raise already_exists(res)
            if self.resolve_template(p, tref) not in self.templates:
                raise not_found(f"projects/{tkey[0]}/global/instanceTemplates/{tkey[1]}")
            self.groups[(p, z, name)] = grp
        return self.start_op("insert", ("zone", p, z), grp["selfLink"], ("group", p, z, name), apply)

    def group_op(self, p, z, name, op_type, apply):
        grp = self.get_group(p, z, name)
        key = (p, z, name)

        def guarded():
            if key not in self.groups:
                raise not_found(f"projects/{p}/zones/{z}/instanceGroupManagers/{name}")
            apply(self.groups[key])
        return self.start_op(op_type, ("zone", p, z), grp["selfLink"], ("group",) + key, guarded)

    def delete_group(self, p, z, name):
        def apply(_grp):
            for ikey in [k for k, i in self.instances.items() if i["group"] == (p, z, name)]:
                del self.instances[ikey]
            del self.groups[(p, z, name)]
        return self.group_op(p, z, name, "delete", apply)

    def resize_group(self, p, z, name, size):
        return self.group_op(p, z, name, "resize", lambda grp: grp.__setitem__("targetSize", size))

    def delete_instances(self, p, z, name, body):
        self.get_group(p, z, name)
        refs = body.get("instances") or []
        skip = bool(body.get("skipInstancesOnValidationError"))
        chosen = []
        for ref in refs:
            m = INSTANCE_REF_RE.search(str(ref))
            ikey = (m.group(1) or p, m.group(2) or z, unquote(m.group(3))) if m else None
            inst = self.instances.get(ikey) if ikey else None
            if inst is None or inst["group"] != (p, z, name):
                if skip:
                    continue
                raise invalid(f"The instance '{ref}' is not a member of the managed instance "
                              f"group 'projects/{p}/zones/{z}/instanceGroupManagers/{name}'.")
            chosen.append(ikey)

        def apply(grp):
            removed = 0
            for ikey in chosen:
                inst = self.instances.get(ikey)
                if inst is not None and inst["group"] == (p, z, name):
                    del self.instances[ikey]
                    removed += 1
            grp["targetSize"] = max(0, grp["targetSize"] - removed)  # as real deleteInstances
        return self.group_op(p, z, name, "deleteInstances", apply)

    # ---- instances --------------------------------------------------------------------

    @staticmethod
    def first_sight(inst, view):
        """True the first time `view` sees `inst` (it then reports it as still provisioning)."""
        first = view not in inst["seen"]
        inst["seen"].add(view)
        return first

    def reconcile(self):
        """Converge every group on its targetSize: create missing instances, drop the newest extras."""
        for gkey, grp in self.groups.items():
            members = self.members(gkey)
            for inst in members[grp["targetSize"]:][::-1]:
                del self.instances[(inst["project"], inst["zone"], inst["name"])]
            for _ in range(grp["targetSize"] - len(members)):
                self.create_instance(gkey, grp)

    def create_instance(self, gkey, grp):
        p, z, _ = gkey
        # A MIG recreates a VM it lost (preempted, or deleted by instances.delete) under the
        # same name, with a new numeric id (https://cloud.google.com/compute/docs/instances/
        # spot#spot-with-mig: "the MIG recreates the VM ... with the same name").
        again = self.recreate.get(gkey) or []
        while again:
            name = again.pop(0)
            if (p, z, name) not in self.instances:
                self.add_instance(p, z, name, gkey, self.resolve_template(p, grp["instanceTemplate"]))
                return
        while True:
            name = f"{grp['baseInstanceName']}-{rand_suffix(4)}"
            if (p, z, name) not in self.instances:
                break
        self.add_instance(p, z, name, gkey, self.resolve_template(p, grp["instanceTemplate"]))

    def add_instance(self, p, z, name, gkey, tkey):
        """Record a VM built from template `tkey`; `gkey` is its group, or None if unmanaged."""
        props = copy.deepcopy((self.templates.get(tkey) or {}).get("properties") or {})
        labels = dict(props.get("labels") or {})
        self.seq += 1
        self.terminated.pop((p, z, name), None)
        inst = self.instances[(p, z, name)] = {
            "name": name, "project": p, "zone": z, "group": gkey, "id": new_id(),
            "template": tkey[1] if tkey else None, "seq": self.seq,
            "creationTimestamp": compute_timestamp(), "preempted": False, "seen": set(),
            "labels": labels, "labelFingerprint": label_fingerprint(labels), "properties": props}
        return inst

    def instance_json(self, inst, status):
        props = inst["properties"]
        base = f"{API}/projects/{inst['project']}/zones/{inst['zone']}"
        machine = (props.get("machineType") or "n1-standard-1").rsplit("/", 1)[-1]
        out = {"kind": "compute#instance", "name": inst["name"], "id": inst["id"], "status": status,
               "machineType": f"{base}/machineTypes/{machine}", "zone": base,
               "selfLink": f"{base}/instances/{inst['name']}",
               "creationTimestamp": inst["creationTimestamp"],
               "scheduling": props.get("scheduling") or {}, "labels": dict(inst["labels"]),
               "labelFingerprint": inst["labelFingerprint"],
               "metadata": dict(props.get("metadata") or {}, kind="compute#metadata")}
        for field in ("disks", "networkInterfaces", "serviceAccounts", "guestAccelerators"):
            if field in props:
                out[field] = props[field]
        return out

    def get_instance(self, p, z, name):
        inst = self.instances.get((p, z, name))
        if inst is not None:
            return self.instance_json(inst, "PROVISIONING" if self.first_sight(inst, "get") else "RUNNING")
        gone = self.terminated.pop((p, z, name), None)  # reclaimed: TERMINATED once, then 404
        if gone is not None:
            return self.instance_json(gone, "TERMINATED")
        raise not_found(f"projects/{p}/zones/{z}/instances/{name}")

    def instance_op(self, p, z, name, op_type, apply):
        """Zonal operation on a live instance (404 at the call otherwise); `apply(inst)` when DONE."""
        key = (p, z, name)
        inst = self.instances.get(key)
        if inst is None:
            raise not_found(f"projects/{p}/zones/{z}/instances/{name}")
        iid = inst["id"]

        def guarded():
            cur = self.instances.get(key)
            if cur is None or cur["id"] != iid:  # deleted (or replaced) while pending
                raise not_found(f"projects/{p}/zones/{z}/instances/{name}")
            apply(cur)
        op = self.start_op(op_type, ("zone", p, z), f"{API}/projects/{p}/zones/{z}/instances/{name}",
                           ("instance",) + key, guarded)
        op["targetId"] = iid
        return op

    def set_labels(self, p, z, name, body):
        inst = self.instances.get((p, z, name))
        if inst is None:
            raise not_found(f"projects/{p}/zones/{z}/instances/{name}")
        labels = check_labels(body.get("labels"))
        fingerprint = body.get("labelFingerprint")
        if not fingerprint or fingerprint != inst["labelFingerprint"]:
            raise condition_not_met()

        def apply(cur):
            if cur["labelFingerprint"] != fingerprint:  # another setLabels completed first
                raise condition_not_met()
            cur["labels"] = dict(labels)
            cur["labelFingerprint"] = label_fingerprint(labels)
        return self.instance_op(p, z, name, "setLabels", apply)

    def delete_instance(self, p, z, name):
        def apply(cur):
            # The group (if any) keeps its targetSize: reconcile() then creates the VM again
            # under its name.
            del self.instances[(p, z, name)]
            if cur["group"] is not None:
                self.recreate.setdefault(cur["group"], []).append(name)
        return self.instance_op(p, z, name, "delete", apply)

    def list_managed(self, p, z, name):
        self.get_group(p, z, name)
        out = []
        for inst in self.members((p, z, name)):
            first = self.first_sight(inst, "list")
            out.append({"instance": f"{API}/projects/{p}/zones/{z}/instances/{inst['name']}",
                        "id": inst["id"], "name": inst["name"],
                        "instanceStatus": "PROVISIONING" if first else "RUNNING",
                        "currentAction": "CREATING" if first else "NONE"})
        return {"managedInstances": out} if out else {}

    def reclaim(self, p, z, name):
        inst = self.instances.pop((p, z, name), None)
        if inst is None:
            raise not_found(f"projects/{p}/zones/{z}/instances/{name}")
        self.terminated[(p, z, name)] = inst
        sched = inst["properties"].get("scheduling") or {}
        replaced = (sched.get("instanceTerminationAction") == "DELETE"
                    or sched.get("provisioningModel") == "SPOT")
        grp = self.groups.get(inst["group"])
        if grp is not None and not replaced:
            grp["targetSize"] = max(0, grp["targetSize"] - 1)
        elif grp is not None:
            self.recreate.setdefault(inst["group"], []).append(name)
        self.reclaimed.append({"project": p, "zone": z, "instance": name,
                               "group": inst["group"][2] if inst["group"] else None,
                               "replaced": replaced, "time": now_rfc3339()})
        self.reconcile()
        return {"reclaimed": name, "replaced": replaced}

    # ---- metadata server --------------------------------------------------------------

    def metadata(self, vm, path, query):
        inst = next((i for i in self.instances.values() if i["name"] == vm), None)
        if inst is None:
            raise KeyError(vm)
        props, p, z = inst["properties"], inst["project"], inst["zone"]
        items = {it.get("key"): it.get("value", "")
                 for it in (props.get("metadata") or {}).get("items") or []}
        sas = props.get("serviceAccounts") or []
        email = sas[0].get("email") if sas else None
        if not email or email == "default":
            email = f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
        simple = {
            "instance/name": inst["name"], "instance/id": inst["id"],
            "instance/hostname": f"{inst['name']}.{z}.c.{p}.internal",
            "instance/zone": f"projects/{PROJECT_NUMBER}/zones/{z}",
            "instance/machine-type": f"projects/{PROJECT_NUMBER}/machineTypes/"
                                     + (props.get("machineType") or "n1-standard-1").rsplit("/", 1)[-1],
            "instance/preempted": "TRUE" if inst["preempted"] else "FALSE",
            "instance/attributes/": "".join(f"{k}\n" for k in items),
            "instance/service-accounts/default/email": email,
            "project/project-id": p, "project/numeric-project-id": PROJECT_NUMBER,
        }
        if path in simple:
            return 200, simple[path]
        if path.startswith("instance/attributes/"):
            key = path[len("instance/attributes/"):]
            if key in items:
                return 200, items[key]
            raise KeyError(path)
        if path == "instance/service-accounts/default/token":
            return 200, json.dumps({"access_token": "standin-token", "expires_in": 3599,
                                    "token_type": "Bearer"})
        if path == "instance/service-accounts/default/identity":
            aud = (query.get("audience") or [""])[0]
            if not aud:
                return 400, "non-empty audience parameter required"
            sub = str(int(hashlib.sha256(f"{p}/{z}/{vm}".encode()).hexdigest(), 16))[:21]
            now = int(time.time())
            claims = {"iss": "https://accounts.google.com", "aud": aud, "sub": sub, "azp": sub,
                      "email": email, "email_verified": True, "iat": now, "exp": now + 3600}
            # Like the real server, instance details are only included with format=full.
            if (query.get("format") or [""])[0] == "full":
                claims["google"] = {"compute_engine": {
                    "instance_name": inst["name"], "instance_id": inst["id"], "zone": z,
                    "project_id": p, "project_number": int(PROJECT_NUMBER)}}
            header = {"alg": "RS256", "kid": "standin", "typ": "JWT"}
            return 200, ".".join([b64url(json.dumps(header).encode()),
                                  b64url(json.dumps(claims).encode()), "c3RhbmRpbg"])
        raise KeyError(path)

    def dump(self):
        return {
            "templates": list(self.templates.values()),
            "groups": [self.groups[k] for k in self.groups],
            "instances": [{"project": i["project"], "zone": i["zone"], "name": i["name"],
                           "id": i["id"], "group": i["group"][2] if i["group"] else None,
                           "template": i["template"],
                           "status": "RUNNING" if i["seen"] else "PROVISIONING",
                           "preempted": i["preempted"], "creationTimestamp": i["creationTimestamp"],
                           "labels": i["labels"], "labelFingerprint": i["labelFingerprint"],
                           "properties": i["properties"]} for i in self.instances.values()],
            "images": list(self.images.values()),
            "operations": [{"name": n, "type": o["json"]["operationType"],
                            "status": o["json"]["status"], "target": o["json"]["targetLink"],
                            "error": o["json"].get("error")} for n, o in self.operations.items()],
            "reclaimed": self.reclaimed,
            "requests": self.requests,
        }


STATE = State()
SEG = r"([^/]+)"
CP = r"/compute/v1/projects/" + SEG
ZONE = CP + r"/zones/" + SEG


def _int_param(q, name):
    try:
        value = int((q.get(name) or [""])[0])
    except ValueError:
        raise invalid(f"Invalid value for field '{name}': '{(q.get(name) or [''])[0]}'.")
    if value < 0:
        raise invalid(f"Invalid value for field '{name}': '{value}'. Must be greater than or equal to 0")
    return value


def _items(kind, base, rows):
    out = {"kind": kind, "id": base, "selfLink": f"{API}/{base}"}
    if rows:
        out["items"] = rows
    return out


def _control_images(_m, _q, b):
    p, name = b.get("project"), b.get("name")
    if not p or not name:
        raise invalid("project and name are required")
    img = {"kind": "compute#image", "name": name, "id": new_id(),
           "selfLink": f"{API}/projects/{p}/global/images/{name}",
           "diskSizeGb": str(b.get("diskSizeGb", "10")),
           "architecture": b.get("architecture", "X86_64"), "status": "READY",
           "creationTimestamp": now_rfc3339()}
    if b.get("family"):
        img["family"] = b["family"]
    STATE.images.pop((p, name), None)  # re-registering makes it the newest of its family
    STATE.images[(p, name)] = img
    return img


def _control_instances(_m, _q, b):
    """Create an unmanaged, already running VM from a template (no operation)."""
    p, z, name = b.get("project"), b.get("zone"), b.get("name")
    if not p or not z:
        raise invalid("project and zone are required")
    check_name(name)
    if (p, z, name) in STATE.instances:
        raise already_exists(f"projects/{p}/zones/{z}/instances/{name}")
    tref = str(b.get("template") or "")
    tkey = STATE.resolve_template(p, tref if "/" in tref else f"global/instanceTemplates/{tref}")
    if tkey is None or tkey not in STATE.templates:
        raise not_found(f"projects/{p}/global/instanceTemplates/{tref}")
    inst = STATE.add_instance(p, z, name, None, tkey)
    inst["seen"].add("get")  # already RUNNING, not first seen as PROVISIONING
    return STATE.instance_json(inst, "RUNNING")


def _control_preempt(_m, _q, b):
    key = (b.get("project"), b.get("zone"), b.get("instance"))
    if key not in STATE.instances:
        raise not_found(f"projects/{key[0]}/zones/{key[1]}/instances/{key[2]}")
    STATE.instances[key]["preempted"] = True
    return {"preempted": key[2]}


def _control_reset(_m, _q, _b):
    STATE.reset()
    return {}


S = STATE
# (method, path regex, handler(match groups, query, body) -> JSON-able response)
ROUTES = [
    ("POST", CP + r"/global/instanceTemplates", lambda m, q, b: S.insert_template(m[0], b)),
    ("GET", CP + r"/global/instanceTemplates",
     lambda m, q, b: _items("compute#instanceTemplateList", f"projects/{m[0]}/global/instanceTemplates",
                            [t for (p, _), t in S.templates.items() if p == m[0]])),
    ("GET", CP + r"/global/instanceTemplates/" + SEG, lambda m, q, b: S.get_template(*m)),
    ("DELETE", CP + r"/global/instanceTemplates/" + SEG, lambda m, q, b: S.delete_template(*m)),
    ("GET", CP + r"/global/images/family/" + SEG, lambda m, q, b: S.get_image(m[0], family=m[1])),
    ("GET", CP + r"/global/images/" + SEG, lambda m, q, b: S.get_image(m[0], name=m[1])),
    ("GET", CP + r"/global/operations/" + SEG,
     lambda m, q, b: S.get_op(("global", m[0]), m[1], False)),
    ("POST", CP + r"/global/operations/" + SEG + "/wait",
     lambda m, q, b: S.get_op(("global", m[0]), m[1], True)),
    ("GET", ZONE + r"/operations/" + SEG, lambda m, q, b: S.get_op(("zone", m[0], m[1]), m[2], False)),
    ("POST", ZONE + r"/operations/" + SEG + "/wait",
     lambda m, q, b: S.get_op(("zone", m[0], m[1]), m[2], True)),
    ("POST", ZONE + r"/instanceGroupManagers", lambda m, q, b: S.insert_group(m[0], m[1], b)),
    ("GET", ZONE + r"/instanceGroupManagers",
     lambda m, q, b: _items("compute#instanceGroupManagerList",
                            f"projects/{m[0]}/zones/{m[1]}/instanceGroupManagers",
                            [S.group_json(k) for k in S.groups if k[:2] == (m[0], m[1])])),
    ("GET", ZONE + r"/instanceGroupManagers/" + SEG,
     lambda m, q, b: S.group_json(tuple(m))),
    ("DELETE", ZONE + r"/instanceGroupManagers/" + SEG, lambda m, q, b: S.delete_group(*m)),
    ("POST", ZONE + r"/instanceGroupManagers/" + SEG + "/resize",
     lambda m, q, b: S.resize_group(*m, _int_param(q, "size"))),
    ("POST", ZONE + r"/instanceGroupManagers/" + SEG + "/deleteInstances",
     lambda m, q, b: S.delete_instances(*m, b)),
    ("POST", ZONE + r"/instanceGroupManagers/" + SEG + "/listManagedInstances",
     lambda m, q, b: S.list_managed(*m)),
    ("GET", ZONE + r"/instances/" + SEG, lambda m, q, b: S.get_instance(*m)),
    ("DELETE", ZONE + r"/instances/" + SEG, lambda m, q, b: S.delete_instance(*m)),
    ("POST", ZONE + r"/instances/" + SEG + "/setLabels", lambda m, q, b: S.set_labels(*m, b)),
    ("POST", r"/_standin/images", _control_images),
    ("POST", r"/_standin/instances", _control_instances),
    ("POST", r"/_standin/preempt", _control_preempt),
    ("POST", r"/_standin/reclaim",
     lambda m, q, b: S.reclaim(b.get("project"), b.get("zone"), b.get("instance"))),
    ("POST", r"/_standin/reset", _control_reset),
    ("GET", r"/_standin/state", lambda m, q, b: S.dump()),
]
ROUTES = [(method, re.compile(pattern + r"/?"), fn) for method, pattern, fn in ROUTES]
METADATA_RE = re.compile(r"/vm/([^/]+)/computeMetadata/v1/(.*)")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gce-standin/1"

    def log_request(self, code="-", size="-"):
        sys.stderr.write(f"{self.command} {self.path} {code}\n")
        sys.stderr.flush()

    def log_message(self, fmt, *args):  # silence the default access log / error noise
        pass

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raw = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return raw
                raw += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, code, payload, content_type="application/json; charset=UTF-8", extra=None):
        data = (json.dumps(payload, indent=1) + "\n").encode() if not isinstance(payload, str) \
            else payload.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        raw = self._read_body()
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query, keep_blank_values=True)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        with STATE.lock:
            if not path.startswith("/_standin/"):
                STATE.requests.append({"method": self.command, "path": path,
                                       "query": {k: v[0] if len(v) == 1 else v for k, v in query.items()},
                                       "body": body if body is not None else raw.decode("utf-8", "replace")})
            STATE.reconcile()
            meta = METADATA_RE.fullmatch(path)
            if meta and self.command == "GET":
                return self._metadata(meta.group(1), meta.group(2), query)
            if body is None or not isinstance(body, dict):
                return self._send(400, invalid("Invalid JSON payload received.").body())
            allowed = []
            for method, pattern, fn in ROUTES:
                m = pattern.fullmatch(path)
                if not m:
                    continue
                if method != self.command:
                    allowed.append(method)
                    continue
                try:
                    result = fn(list(m.groups()), query, body)
                    STATE.reconcile()
                    return self._send(200, result)
                except ApiError as e:
                    return self._send(e.code, e.body())
            if allowed:
                return self._send(405, ApiError(405, "httpMethodNotAllowed",
                                                f"Method {self.command} not allowed").body())
            return self._send(404, not_found(path.lstrip("/")).body())

    def _metadata(self, vm, path, query):
        hdr = {"Metadata-Flavor": "Google"}
        if self.headers.get("Metadata-Flavor") != "Google":
            return self._send(403, "Missing required header \"Metadata-Flavor\": \"Google\"\n",
                              "text/plain; charset=utf-8", hdr)
        try:
            code, text = STATE.metadata(vm, path, query)
        except KeyError:
            return self._send(404, f"{path} not found for instance {vm}\n", "text/plain; charset=utf-8", hdr)
        return self._send(code, text, "application/text", hdr)

    def _safe_handle(self):
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # keep serving; report the bug to the client and stderr
            sys.stderr.write(f"internal error: {e!r}\n")
            self._send(500, {"error": {"code": 500, "message": repr(e), "errors": [
                {"message": repr(e), "domain": "global", "reason": "backendError"}]}})

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _safe_handle


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 = any free port)")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True

    def stop(*_):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on http://{server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
