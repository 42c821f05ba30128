#!/usr/bin/env python3
"""Local stand-in for the Google Compute Engine REST API v1 and the GCE metadata server.

Why this exists: Google ships no Compute Engine emulator, so integration tests point the
official Rust client (`google-cloud-compute-v1`, anonymous credentials) at this server
instead. It implements only the slice of Compute the project uses -- instance templates,
images, zonal and regional managed instance groups (MIGs), instances (get, setLabels,
delete), zonal/regional/global operations -- plus a per-VM metadata server and a few
`/_standin/*` control endpoints.

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
  * Regional MIGs (/regions/R/instanceGroupManagers, operations under /regions/R/operations
    with a `region` field) behave like zonal ones, over the zones of distributionPolicy
    (echoed as full zone URLs; by default R-a, R-b, R-c; a zone outside R -> 400 invalid).
    Each VM is a zonal instance in the zone it was placed in: the least used zone with
    capacity, ties in the policy's order; a VM recreated under its name goes back to its zone
    if it can. targetShape EVEN (default) keeps zone counts within one of each other whatever
    the capacity, ANY_SINGLE_ZONE keeps all VMs in one zone, BALANCED/ANY use any zone;
    a shape other than EVEN without updatePolicy.instanceRedistributionType NONE (the
    default is PROACTIVE) -> 400 invalid at the call.
  * Stockouts and quota (/_standin/stockout): a VM that no allowed zone can create is not
    made; the group keeps it as a pending creation, listed by listManagedInstances with
    currentAction CREATING, no instanceStatus and `lastAttempt.errors` (code
    ZONE_RESOURCE_POOL_EXHAUSTED, QUOTA_EXCEEDED..., Compute's message), counted in
    currentActions.creating, the group not stable, targetSize unchanged; instances.get -> 404.
    The group retries at every reconciliation (every request) and makes the VM once a zone
    has capacity. Resizing down drops pending creations before VMs; deleteInstances accepts
    them too.
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
  * Operations finish on their own, as on GCE: DONE on the second GET, at once on .../wait,
    or after OP_REQUESTS further API requests whether or not anyone polls them.
  * IAM by grant: a call through /as/EMAIL/ is that service account's; with grants set
    (/_standin/grants) it may make only what they allow (roles/compute.instanceAdmin.v1
    under an IAM condition on resource.name, evaluated per call), else 403 "Required
    '<permission>' permission for '<resource>'" (see authorize()).
  * listManagedInstances is paged (nextPageToken / pageToken): two entries a page unless
    --page-size says otherwise, so code that reads one page misses VMs.
  * Errors use Compute's JSON shape: {"error": {"code", "message", "errors": [{"message",
    "domain": "global", "reason"}]}}; int64 fields (ids, diskSizeGb) are JSON strings.

Metadata server: GET /vm/{instance}/computeMetadata/v1/{path} with `Metadata-Flavor: Google`.
Control: POST /_standin/images, /_standin/instances (a standalone VM from a template),
/_standin/preempt, /_standin/reclaim, /_standin/serial ({"project", "zone", "instance", "text"}:
what the VM printed on serial port 1), /_standin/stockout ({"project", "zone", "reason"} makes
the zone unable to create VMs; {"project", "zone", "clear": true} ends it), /_standin/reset
(clears stockouts too); GET /_standin/state (dump of everything: groups with their
pendingCreations, stockouts, and a log of every non-control request).

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
# Entries per page of listManagedInstances (--page-size).
PAGE_SIZE = 500
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
# Regional MIG target distribution shapes; EVEN is the default
# (https://cloud.google.com/compute/docs/instance-groups/regional-mig-distribution-shape).
SHAPES = ("EVEN", "BALANCED", "ANY", "ANY_SINGLE_ZONE")
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


def scope_res(scope):
    """`projects/P/global`, `projects/P/zones/Z` or `projects/P/regions/R` for a scope
    ("global", P), ("zone", P, Z) or ("region", P, R); a group key (kind, P, where, name)
    gives its scope's too."""
    kind, p = scope[0], scope[1]
    return f"projects/{p}/global" if kind == "global" else f"projects/{p}/{kind}s/{scope[2]}"


def group_res(gkey):
    return f"{scope_res(gkey)}/instanceGroupManagers/{gkey[3]}"


def zone_url(p, zone):
    return f"{API}/projects/{p}/zones/{zone}"


def stockout_message(p, zone, reason):
    """The error text Compute gives when `zone` cannot create a VM for `reason`."""
    if reason == "ZONE_RESOURCE_POOL_EXHAUSTED":
        return (f"The zone 'projects/{p}/zones/{zone}' does not have enough resources available "
                "to fulfill the request.  Try a different zone, or try again later.")
    if reason == "QUOTA_EXCEEDED":
        return f"Quota 'CPUS' exceeded.  Limit: 8.0 in region {zone.rsplit('-', 1)[0]}."
    return f"{reason} in zone {zone}"


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


def target_size(body):
    try:
        target = int(body["targetSize"])
    except (KeyError, TypeError, ValueError):
        raise invalid("Invalid value for field 'resource.targetSize': "
                      f"'{body.get('targetSize', '')}'. Must be a non-negative integer.")
    if target < 0:
        raise invalid(f"Invalid value for field 'resource.targetSize': '{target}'.")
    return target


def distribution_zones(region, policy):
    """The zone names of a regional group's distributionPolicy.zones (`zones/Z` or a URL)."""
    zones = []
    for i, entry in enumerate(policy.get("zones") or []):
        ref = str(entry.get("zone") or "") if isinstance(entry, dict) else ""
        zone = ref.rstrip("/").rsplit("/", 1)[-1]
        if zone.rsplit("-", 1)[0] != region:
            raise invalid(f"Invalid value for field 'resource.distributionPolicy.zones[{i}].zone': "
                          f"'{ref}'. The zone must be in region '{region}'.")
        zones.append(zone)
    # Without a choice the group uses three zones of the region
    # (https://cloud.google.com/compute/docs/instance-groups/regional-migs).
    return list(dict.fromkeys(zones)) or [f"{region}-{s}" for s in "abc"]


def distribution_policy(p, region, body):
    """A regional group's distributionPolicy as Compute echoes it: full zone URLs and the shape."""
    policy, update = body.get("distributionPolicy") or {}, body.get("updatePolicy") or {}
    if not isinstance(policy, dict) or not isinstance(update, dict):
        raise invalid("Invalid value for field 'resource.distributionPolicy': must be an object.")
    zones = distribution_zones(region, policy)
    shape = policy.get("targetShape") or "EVEN"
    if shape not in SHAPES:
        raise invalid(f"Invalid value for field 'resource.distributionPolicy.targetShape': "
                      f"'{shape}'. Must be one of {', '.join(SHAPES)}.")
    # Proactive instance redistribution (the default) only goes with EVEN; the other shapes
    # need it off (https://cloud.google.com/compute/docs/instance-groups/
    # regional-mig-distribution-shape).
    redistribution = update.get("instanceRedistributionType") or "PROACTIVE"
    if shape != "EVEN" and redistribution != "NONE":
        raise invalid("Invalid value for field 'resource.updatePolicy.instanceRedistributionType': "
                      f"'{redistribution}'. Proactive instance redistribution is not supported "
                      f"with target distribution shape {shape}; set it to NONE.")
    return dict(policy, zones=[{"zone": zone_url(p, z)} for z in zones], targetShape=shape)


class State:
    """All stand-in state. Every method is called with `lock` held."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.templates = {}   # (project, name) -> InstanceTemplate JSON
        self.images = {}      # (project, name) -> Image JSON
        # Group key: ("zone", project, zone, name) or ("region", project, region, name).
        self.groups = {}      # group key -> InstanceGroupManager JSON (stored parts)
        self.instances = {}   # (project, zone, name) -> internal instance record
        self.terminated = {}  # reclaimed instances, shown once as TERMINATED by instances.get
        self.recreate = {}    # group key -> [(name, zone)] of VMs to create again under their name
        self.creating = {}    # group key -> pending creations [{"name", "zone", "reason"}]
        self.stockouts = {}   # (project, zone) -> reason the zone cannot create VMs now
        self.reclaimed = []   # log of reclaimed instances
        self.operations = {}  # name -> {"json", "scope", "key", "apply", "polls"}
        self.requests = []    # request log (method, path, query, body)
        self.seq = 0          # instance creation order, used to pick the newest on scale-in
        self.tick = 0         # API requests served: the stand-in's clock for operations
        self.grants = {}      # member email -> [(role, condition expression or None)]

    # ---- operations -------------------------------------------------------------------

    def start_op(self, op_type, scope, target_link, key, apply):
        """Create a RUNNING operation; `apply` runs (and may raise ApiError) when it is DONE."""
        name = f"operation-{int(time.time() * 1000)}-{rand_suffix(12)}"
        base = f"{API}/{scope_res(scope)}"
        op = {"kind": "compute#operation", "id": new_id(), "name": name,
              "operationType": op_type, "targetLink": target_link, "targetId": new_id(),
              "status": "RUNNING", "progress": 0, "insertTime": now_rfc3339(),
              "startTime": now_rfc3339(), "user": "standin@example.com",
              "selfLink": f"{base}/operations/{name}"}
        if scope[0] != "global":  # zonal/regional operations name their zone/region
            op[scope[0]] = base
        self.operations[name] = {"json": op, "scope": scope, "key": key, "apply": apply, "polls": 0,
                                 "born": self.tick}
        return op

    def age_operations(self):
        """Operations finish whether or not anyone polls them, as on GCE: OP_REQUESTS API
        requests after they began (the stand-in's notion of time passing)."""
        for op in list(self.operations.values()):
            if op["json"]["status"] != "DONE" and self.tick - op["born"] >= OP_REQUESTS:
                self.finish_op(op)

    def pending(self, op_type, key):
        return any(o["json"]["status"] != "DONE" and o["json"]["operationType"] == op_type
                   and o["key"] == key for o in self.operations.values())

    def get_op(self, scope, name, wait):
        op = self.operations.get(name)
        if op is None or op["scope"] != scope:
            raise not_found(f"{scope_res(scope)}/operations/{name}")
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
        return [group_res(g) for g, grp in self.groups.items()
                if self.resolve_template(g[1], grp["instanceTemplate"]) == (project, name)]

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

    # ---- managed instance groups (zonal and regional) ---------------------------------

    def get_group(self, gkey):
        if gkey not in self.groups:
            raise not_found(group_res(gkey))
        return self.groups[gkey]

    def members(self, gkey):
        return sorted((i for i in self.instances.values() if i["group"] == gkey),
                      key=lambda i: i["seq"])

    def group_json(self, gkey):
        """The group as Compute shows it; counts instances not yet seen by this view, and
        pending creations, as creating."""
        grp, members = self.get_group(gkey), self.members(gkey)  # 404 if unknown
        pending = len(self.creating.get(gkey, []))
        creating = sum(1 for i in members if self.first_sight(i, "group"))
        actions = {a: 0 for a in ("abandoning", "creatingWithoutRetries", "deleting", "recreating",
                                  "refreshing", "restarting", "resuming", "starting", "stopping",
                                  "suspending", "verifying")}
        actions.update(creating=creating + pending, none=len(members) - creating)
        stable = creating == 0 and pending == 0 and len(members) == grp["targetSize"]
        return dict(grp, currentActions=actions,
                    status={"isStable": stable, "versionTarget": {"isReached": stable},
                            "allInstancesConfig": {"effective": True},
                            "stateful": {"hasStatefulConfig": False}})

    def group_template(self, p, body):
        """The new group's template reference and key: 400 without one, 404 if it is unknown."""
        tref = body.get("instanceTemplate") or next(
            (v.get("instanceTemplate") for v in body.get("versions") or [] if isinstance(v, dict)), None)
        if not tref:
            raise invalid("Invalid value for field 'resource.instanceTemplate': ''. "
                          "An instance template is required.")
        tkey = self.resolve_template(p, tref)
        if tkey is None or tkey not in self.templates:
            shown = f"projects/{tkey[0]}/global/instanceTemplates/{tkey[1]}" if tkey else tref
            raise not_found(shown)
        return tref, tkey

    def insert_group(self, scope, body):
        """instanceGroupManagers.insert (scope ("zone", P, Z)) or regionInstanceGroupManagers
        .insert (scope ("region", P, R))."""
        name = body.get("name")
        check_name(name)
        gkey, p = scope + (name,), scope[1]
        res = group_res(gkey)
        if gkey in self.groups or self.pending("insert", ("group",) + gkey):
            raise already_exists(res)
        tref, tkey = self.group_template(p, body)
        base_name = body.get("baseInstanceName")
        check_name(base_name, "resource.baseInstanceName")
        target = target_size(body)
        where = f"{API}/{scope_res(scope)}"
        grp = dict(body, kind="compute#instanceGroupManager", id=new_id(),
                   creationTimestamp=now_rfc3339(), selfLink=f"{API}/{res}", **{scope[0]: where},
                   instanceTemplate=tref, baseInstanceName=base_name, targetSize=target,
                   instanceGroup=f"{where}/instanceGroups/{name}",
                   fingerprint=b64url(random.randbytes(8)))
        if scope[0] == "region":
            grp["distributionPolicy"] = distribution_policy(p, scope[2], body)

        def apply():
            if gkey in self.groups:
                raise already_exists(res)
            if self.resolve_template(p, tref) not in self.templates:
                raise not_found(f"projects/{tkey[0]}/global/instanceTemplates/{tkey[1]}")
            self.groups[gkey] = grp
        return self.start_op("insert", scope, grp["selfLink"], ("group",) + gkey, apply)

    def group_op(self, gkey, op_type, apply):
        grp = self.get_group(gkey)

        def guarded():
            if gkey not in self.groups:
                raise not_found(group_res(gkey))
            apply(self.groups[gkey])
        return self.start_op(op_type, gkey[:3], grp["selfLink"], ("group",) + gkey, guarded)

    def delete_group(self, gkey):
        def apply(_grp):
            for ikey in [k for k, i in self.instances.items() if i["group"] == gkey]:
                del self.instances[ikey]
            del self.groups[gkey]
            self.creating.pop(gkey, None)
            self.recreate.pop(gkey, None)
        return self.group_op(gkey, "delete", apply)

    def set_instance_template(self, gkey, body):
        """The template the group makes new VMs from; VMs it made keep theirs
        (https://cloud.google.com/compute/docs/reference/rest/v1/regionInstanceGroupManagers/setInstanceTemplate)."""
        ref = body.get("instanceTemplate")
        tkey = self.resolve_template(gkey[1], ref)
        if tkey is None or tkey not in self.templates:
            raise not_found(ref or "instanceTemplate")
        return self.group_op(gkey, "setInstanceTemplate",
                             lambda grp: grp.__setitem__("instanceTemplate", ref))

    def resize_group(self, gkey, size):
        return self.group_op(gkey, "resize", lambda grp: grp.__setitem__("targetSize", size))

    def delete_instances(self, gkey, body):
        self.get_group(gkey)
        skip = bool(body.get("skipInstancesOnValidationError"))
        chosen = []
        for ref in body.get("instances") or []:
            name = self.member_name(gkey, ref)
            if name is None:
                if skip:
                    continue
                raise invalid(f"The instance '{ref}' is not a member of the managed instance "
                              f"group '{group_res(gkey)}'.")
            chosen.append(name)

        def apply(grp):
            removed = sum(self.remove_member(gkey, name) for name in chosen)
            grp["targetSize"] = max(0, grp["targetSize"] - removed)  # as real deleteInstances
        return self.group_op(gkey, "deleteInstances", apply)

    def member_name(self, gkey, ref):
        """The name of the group's VM or pending creation that `ref` designates, else None.
        A reference without a zone means the group's member of that name, in any zone."""
        m = INSTANCE_REF_RE.search(str(ref))
        if m is None or (m.group(1) or gkey[1]) != gkey[1]:
            return None
        zone, name = m.group(2), unquote(m.group(3))
        known = [(i["name"], i["zone"]) for i in self.members(gkey)]
        known += [(c["name"], c["zone"]) for c in self.creating.get(gkey, [])]
        return name if any(n == name and zone in (None, z) for n, z in known) else None

    def remove_member(self, gkey, name):
        """Delete the group's VM or pending creation `name`: 1 if there was one, else 0."""
        vm = next((i for i in self.members(gkey) if i["name"] == name), None)
        if vm is not None:
            del self.instances[(vm["project"], vm["zone"], name)]
            return 1
        pend = self.creating.get(gkey, [])
        entry = next((c for c in pend if c["name"] == name), None)
        if entry is not None:
            pend.remove(entry)
        return int(entry is not None)

    def list_managed(self, gkey, q=None):
        """One page of the group's managed instances. Compute pages this list (maxResults at
        most 500, its default; a page may hold fewer, and `nextPageToken` says there is more:
        https://cloud.google.com/compute/docs/reference/rest/v1/regionInstanceGroupManagers/listManagedInstances).
        The stand-in's pages hold at most PAGE_SIZE entries, so a reader of one page misses VMs."""
        self.get_group(gkey)
        q = q or {}
        rows = [("vm", inst) for inst in self.members(gkey)]
        rows += [("pending", c) for c in self.creating.get(gkey, [])]
        start = _int_param(q, "pageToken") if q.get("pageToken", [""])[0] else 0
        size = min(_int_param(q, "maxResults") if q.get("maxResults", [""])[0] else 500, 500, PAGE_SIZE) or PAGE_SIZE
        out = []
        for kind, row in rows[start:start + size]:
            if kind == "pending":
                out.append(self.pending_json(gkey[1], row))
                continue
            first = self.first_sight(row, "list")
            out.append({"instance": f"{zone_url(row['project'], row['zone'])}/instances/{row['name']}",
                        "id": row["id"], "name": row["name"],
                        "instanceStatus": "PROVISIONING" if first else "RUNNING",
                        "currentAction": "CREATING" if first else "NONE"})
        page = {"managedInstances": out} if out else {}
        if start + size < len(rows):
            page["nextPageToken"] = str(start + size)
        return page

    @staticmethod
    def pending_json(p, entry):
        """A creation the group keeps retrying: no VM yet, so no instanceStatus, and the last
        attempt's error (https://cloud.google.com/compute/docs/instance-groups/
        getting-info-about-migs#checking_the_status_of_managed_instances)."""
        zone, reason = entry["zone"], entry["reason"]
        return {"instance": f"{zone_url(p, zone)}/instances/{entry['name']}", "name": entry["name"],
                "currentAction": "CREATING", "lastAttempt": {"errors": {"errors": [
                    {"code": reason, "message": stockout_message(p, zone, reason)}]}}}

    # ---- reconciliation and VM placement ----------------------------------------------

    def reconcile(self):
        """Converge every group on its targetSize: drop the extras, retry pending creations,
        create the missing instances."""
        for gkey, grp in self.groups.items():
            self.trim(gkey, grp["targetSize"])
            self.retry_creations(gkey, grp)
            missing = grp["targetSize"] - len(self.members(gkey)) - len(self.creating.get(gkey, []))
            for _ in range(missing):
                self.create_instance(gkey, grp)

    def retry_creations(self, gkey, grp):
        """A MIG retries the creations that failed on its own; each keeps its place in the
        list, and the others count in the zones' load meanwhile."""
        pend = self.creating.get(gkey, [])
        for entry in list(pend):
            at = pend.index(entry)
            del pend[at]
            failed = self.place(gkey, grp, entry["name"], entry["zone"], entry.get("repair", False))
            if failed:
                pend.insert(at, failed)

    def trim(self, gkey, target):
        """Drop what exceeds `target`: pending creations first (they hold no VM; Compute weighs
        a VM's status when it resizes down, https://cloud.google.com/compute/docs/reference/
        rest/v1/instanceGroupManagers/resize), then the newest VMs."""
        members = self.members(gkey)
        del self.creating.get(gkey, [])[max(0, target - len(members)):]
        for inst in members[target:][::-1]:
            del self.instances[(inst["project"], inst["zone"], inst["name"])]

    def create_instance(self, gkey, grp):
        name, zone = self.next_name(gkey, grp)
        failed = self.place(gkey, grp, name, zone, repair=zone is not None)
        if failed:
            self.creating.setdefault(gkey, []).append(failed)

    def next_name(self, gkey, grp):
        """The name of the group's next VM, with the zone to prefer for it."""
        # A MIG recreates a VM it lost (preempted, or deleted by instances.delete) under the
        # same name, with a new numeric id (https://cloud.google.com/compute/docs/instances/
        # spot#spot-with-mig: "the MIG recreates the VM ... with the same name").
        again = self.recreate.get(gkey) or []
        while again:
            name, zone = again.pop(0)
            if self.name_free(gkey, name):
                return name, zone
        while True:
            name = f"{grp['baseInstanceName']}-{rand_suffix(4)}"
            if self.name_free(gkey, name):
                return name, None

    def name_free(self, gkey, name):
        return (all((gkey[1], z, name) not in self.instances for z in self.group_zones(gkey))
                and all(c["name"] != name for c in self.creating.get(gkey, [])))

    def group_zones(self, gkey):
        """The zones the group may use: its zone, or its distribution's, in the policy's order."""
        if gkey[0] == "zone":
            return [gkey[2]]
        return [u["zone"].rsplit("/", 1)[-1] for u in self.groups[gkey]["distributionPolicy"]["zones"]]

    def place(self, gkey, grp, name, preferred=None, repair=False):
        """Create VM `name` in the first allowed zone that has capacity. If none has, return
        the failed attempt (a pending creation: the zone tried first and its error)."""
        p = gkey[1]
        zones = self.zone_choices(gkey, preferred)
        # A repair (a VM made again under its name) keeps its zone unless the group allows
        # changing it (https://cloud.google.com/compute/docs/instance-groups/about-repair:
        # instanceLifecyclePolicy.onRepair.allowChangingZone, default NO).
        on_repair = (grp.get("instanceLifecyclePolicy") or {}).get("onRepair") or {}
        if repair and preferred is not None and on_repair.get("allowChangingZone") != "YES":
            zones = [preferred]
        for z in zones:
            if (p, z) not in self.stockouts:
                self.add_instance(p, z, name, gkey, self.resolve_template(p, grp["instanceTemplate"]))
                return None
        return {"name": name, "zone": zones[0], "reason": self.stockouts[(p, zones[0])],
                "repair": repair}

    def zone_choices(self, gkey, preferred=None):
        """The zones a new VM of the group may go to, best first: the least used (VMs and
        pending creations), ties in the policy's order, `preferred` (a recreated VM's zone)
        ahead. Shapes (https://cloud.google.com/compute/docs/instance-groups/
        regional-mig-distribution-shape): EVEN keeps zone counts within one of each other
        whatever the capacity, so only the least used zones qualify; ANY_SINGLE_ZONE keeps
        every VM in the zone it chose when it scaled out from zero; BALANCED and ANY use
        any zone with capacity."""
        order = self.group_zones(gkey)
        shape = (self.groups[gkey].get("distributionPolicy") or {}).get("targetShape") or "EVEN"
        used = [i["zone"] for i in self.members(gkey)]
        if shape == "ANY_SINGLE_ZONE":
            return [z for z in order if z in used][:1] or sorted(order, key=lambda z: z != preferred)
        load = {z: used.count(z) for z in order}
        for entry in self.creating.get(gkey, []):
            load[entry["zone"]] = load.get(entry["zone"], 0) + 1
        if shape == "EVEN":
            order = [z for z in order if load[z] == min(load[z] for z in order)]
        return sorted(order, key=lambda z: (z != preferred, load[z]))

    # ---- instances --------------------------------------------------------------------

    @staticmethod
    def first_sight(inst, view):
        """True the first time `view` sees `inst` (it then reports it as still provisioning)."""
        first = view not in inst["seen"]
        inst["seen"].add(view)
        return first

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

    def serial_port(self, p, z, name):
        """instances.getSerialPortOutput (port 1): what the VM printed, as set by /_standin/serial."""
        inst = self.instances.get((p, z, name))
        if inst is None:
            raise not_found(f"projects/{p}/zones/{z}/instances/{name}")
        text = inst.get("serial", "")
        return {"kind": "compute#serialPortOutput", "contents": text, "start": "0",
                "next": str(len(text.encode())),
                "selfLink": f"{API}/projects/{p}/zones/{z}/instances/{name}/serialPort"}

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
                self.recreate.setdefault(cur["group"], []).append((name, z))
        return self.instance_op(p, z, name, "delete", apply)

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
            self.recreate.setdefault(inst["group"], []).append((name, z))
        self.reclaimed.append({"project": p, "zone": z, "instance": name,
                               "group": inst["group"][3] if inst["group"] else None,
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
            "groups": [dict(grp, pendingCreations=[
                dict(c, message=stockout_message(k[1], c["zone"], c["reason"]))
                for c in self.creating.get(k, [])]) for k, grp in self.groups.items()],
            "stockouts": [{"project": p, "zone": z, "reason": r}
                          for (p, z), r in self.stockouts.items()],
            "instances": [{"project": i["project"], "zone": i["zone"], "name": i["name"],
                           "id": i["id"], "group": i["group"][3] if i["group"] else None,
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
# Requests after which an operation nobody polls is DONE.
OP_REQUESTS = 4
SEG = r"([^/]+)"
CP = r"/compute/v1/projects/" + SEG
ZONE = CP + r"/zones/" + SEG
REGION = CP + r"/regions/" + SEG


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


def _control_serial(_m, _q, b):
    """What a VM printed on its serial port 1 (its boot, the startup script)."""
    key = (b.get("project"), b.get("zone"), b.get("instance"))
    if key not in STATE.instances:
        raise not_found(f"projects/{key[0]}/zones/{key[1]}/instances/{key[2]}")
    STATE.instances[key]["serial"] = str(b.get("text", ""))
    return {"serial": key[2]}


def _control_preempt(_m, _q, b):
    key = (b.get("project"), b.get("zone"), b.get("instance"))
    if key not in STATE.instances:
        raise not_found(f"projects/{key[0]}/zones/{key[1]}/instances/{key[2]}")
    STATE.instances[key]["preempted"] = True
    return {"preempted": key[2]}


def _control_stockout(_m, _q, b):
    """Zone `zone` of `project` cannot create VMs (for `reason`) until `clear` is sent."""
    p, z = b.get("project"), b.get("zone")
    if not p or not z:
        raise invalid("project and zone are required")
    if b.get("clear"):
        STATE.stockouts.pop((p, z), None)
        return {}
    reason = b.get("reason") or "ZONE_RESOURCE_POOL_EXHAUSTED"
    if not isinstance(reason, str):
        raise invalid("reason must be a string")
    STATE.stockouts[(p, z)] = reason
    return {"project": p, "zone": z, "reason": reason}


def _control_reset(_m, _q, _b):
    STATE.reset()
    return {}


# ---- IAM: who may call what ---------------------------------------------------------------
# A call made through /as/EMAIL/... is made by that service account (in tests this stands for
# the OAuth token a VM's account gets from its metadata server; calls without it are the
# functions' account, which holds roles/compute.instanceAdmin.v1 unconditionally). A member
# with grants (/_standin/grants) may make only the calls they allow, decided per call on the
# permission Compute checks and the resource's name, as IAM Conditions see it:
# https://cloud.google.com/compute/docs/access/iam-conditions (resource.name is
# projects/P/zones/Z/instances/NAME, projects/P/regions/R/instanceGroupManagers/NAME, ...).
# A call refused is 403 with Compute's "Required '<permission>' permission for '<resource>'".

def _perm_routes():
    inst = ZONE + r"/instances/" + SEG
    rigm = REGION + r"/instanceGroupManagers/" + SEG
    zigm = ZONE + r"/instanceGroupManagers/" + SEG
    zres = lambda g: f"projects/{g[0]}/zones/{g[1]}/instances/{g[2]}"
    rgrp = lambda g: f"projects/{g[0]}/regions/{g[1]}/instanceGroupManagers/{g[2]}"
    zgrp = lambda g: f"projects/{g[0]}/zones/{g[1]}/instanceGroupManagers/{g[2]}"
    return [
        ("GET", inst, "compute.instances.get", zres),
        ("POST", inst + r"/setLabels", "compute.instances.setLabels", zres),
        ("DELETE", inst, "compute.instances.delete", zres),
        ("GET", inst + r"/serialPort", "compute.instances.getSerialPortOutput", zres),
        ("GET", rigm, "compute.instanceGroupManagers.get", rgrp),
        ("POST", rigm + r"/listManagedInstances", "compute.instanceGroupManagers.get", rgrp),
        ("POST", rigm + r"/(?:deleteInstances|resize|setInstanceTemplate)", "compute.instanceGroupManagers.update", rgrp),
        ("GET", zigm, "compute.instanceGroupManagers.get", zgrp),
        ("POST", zigm + r"/listManagedInstances", "compute.instanceGroupManagers.get", zgrp),
        ("POST", zigm + r"/(?:deleteInstances|resize|setInstanceTemplate)", "compute.instanceGroupManagers.update", zgrp),
        ("GET", ZONE + r"/operations/" + SEG, "compute.zoneOperations.get",
         lambda g: f"projects/{g[0]}/zones/{g[1]}/operations/{g[2]}"),
        ("POST", ZONE + r"/operations/" + SEG + r"/wait", "compute.zoneOperations.get",
         lambda g: f"projects/{g[0]}/zones/{g[1]}/operations/{g[2]}"),
        ("GET", REGION + r"/operations/" + SEG, "compute.regionOperations.get",
         lambda g: f"projects/{g[0]}/regions/{g[1]}/operations/{g[2]}"),
        ("POST", REGION + r"/operations/" + SEG + r"/wait", "compute.regionOperations.get",
         lambda g: f"projects/{g[0]}/regions/{g[1]}/operations/{g[2]}"),
    ]


PERM_ROUTES = None
CONDITION_TERM = re.compile(r'resource\.name\.extract\("([^"]*)"\)\.startsWith\("([^"]*)"\)')


def permission_of(method, path):
    """(permission, resource name) Compute checks for the call; None for one not modelled."""
    global PERM_ROUTES
    PERM_ROUTES = PERM_ROUTES or [(m, re.compile(p), perm, res) for m, p, perm, res in _perm_routes()]
    for m, pattern, perm, res in PERM_ROUTES:
        hit = pattern.fullmatch(path)
        if hit and m == method:
            return perm, res(hit.groups())
    return None


def extract(name, template):
    """CEL's resource.name.extract(template) as IAM Conditions define it: the part of the
    name where the template's {variable} stands; "" when the template does not match."""
    pre, _, rest = template.partition("{")
    post = rest.partition("}")[2]
    i = name.find(pre)
    if i < 0:
        return ""
    tail = name[i + len(pre):]
    if not post:
        return tail
    j = tail.find(post)
    return tail[:j] if j >= 0 else ""


def condition_holds(expression, resource):
    """The grant's condition for `resource`: a disjunction of
    resource.name.extract(T).startsWith(P) terms (what Studio's conditions use); anything
    else is refused loudly, never guessed."""
    for term in expression.split("||"):
        m = CONDITION_TERM.fullmatch(term.strip())
        if not m:
            raise ValueError(f"the stand-in cannot evaluate the condition term {term.strip()!r}")
        if extract(resource, m.group(1)).startswith(m.group(2)):
            return True
    return False


def authorize(member, method, path):
    """None when `member` may make the call, else the 403 ApiError."""
    if member is None or member not in STATE.grants:
        return None
    what = permission_of(method, path)
    if what is None:
        return ApiError(403, "forbidden", f"Required permission for '{path}' (the stand-in models no permission for {method} here)")
    perm, resource = what
    for role, condition in STATE.grants[member]:
        if role == "roles/compute.instanceAdmin.v1" and perm.startswith("compute."):
            if condition is None or condition_holds(condition, resource):
                return None
    return ApiError(403, "forbidden", f"Required '{perm}' permission for '{resource}'")


def _control_grants(_m, _q, b):
    """{"member": EMAIL, "bindings": [{"role", "condition"?}]}: the member's grants, replaced."""
    STATE.grants[b["member"]] = [(x["role"], x.get("condition")) for x in b.get("bindings", [])]
    return {}


S = STATE


def _scope_routes(kind, base):
    """Operations and managed instance groups of a zone (kind "zone", `base` ZONE) or of a
    region ("region", REGION): one code path serves both, keyed (kind, project, where, name)."""
    igm = base + r"/instanceGroupManagers"

    def gkey(m):
        return (kind, m[0], m[1], m[2])
    return [
        ("GET", base + r"/operations/" + SEG, lambda m, q, b: S.get_op((kind, m[0], m[1]), m[2], False)),
        ("POST", base + r"/operations/" + SEG + "/wait",
         lambda m, q, b: S.get_op((kind, m[0], m[1]), m[2], True)),
        ("POST", igm, lambda m, q, b: S.insert_group((kind, m[0], m[1]), b)),
        ("GET", igm, lambda m, q, b: _items(
            "compute#instanceGroupManagerList", f"{scope_res((kind, m[0], m[1]))}/instanceGroupManagers",
            [S.group_json(k) for k in S.groups if k[:3] == (kind, m[0], m[1])])),
        ("GET", igm + "/" + SEG, lambda m, q, b: S.group_json(gkey(m))),
        ("DELETE", igm + "/" + SEG, lambda m, q, b: S.delete_group(gkey(m))),
        ("POST", igm + "/" + SEG + "/setInstanceTemplate",
         lambda m, q, b: S.set_instance_template(gkey(m), b)),
        ("POST", igm + "/" + SEG + "/resize",
         lambda m, q, b: S.resize_group(gkey(m), _int_param(q, "size"))),
        ("POST", igm + "/" + SEG + "/deleteInstances", lambda m, q, b: S.delete_instances(gkey(m), b)),
        ("POST", igm + "/" + SEG + "/listManagedInstances", lambda m, q, b: S.list_managed(gkey(m), q)),
    ]


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
    *_scope_routes("zone", ZONE),
    *_scope_routes("region", REGION),
    ("GET", ZONE + r"/instances/" + SEG + "/serialPort", lambda m, q, b: S.serial_port(*m)),
    ("GET", ZONE + r"/instances/" + SEG, lambda m, q, b: S.get_instance(*m)),
    ("DELETE", ZONE + r"/instances/" + SEG, lambda m, q, b: S.delete_instance(*m)),
    ("POST", ZONE + r"/instances/" + SEG + "/setLabels", lambda m, q, b: S.set_labels(*m, b)),
    ("POST", r"/_standin/images", _control_images),
    ("POST", r"/_standin/instances", _control_instances),
    ("POST", r"/_standin/preempt", _control_preempt),
    ("POST", r"/_standin/serial", _control_serial),
    ("POST", r"/_standin/reclaim",
     lambda m, q, b: S.reclaim(b.get("project"), b.get("zone"), b.get("instance"))),
    ("POST", r"/_standin/stockout", _control_stockout),
    ("POST", r"/_standin/reset", _control_reset),
    ("POST", r"/_standin/grants", _control_grants),
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
        member = None
        as_member = re.fullmatch(r"/as/([^/]+)(/.*)", path)
        if as_member:
            member, path = as_member.group(1), as_member.group(2)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        with STATE.lock:
            if not path.startswith("/_standin/"):
                STATE.requests.append({"method": self.command, "path": path,
                                       "query": {k: v[0] if len(v) == 1 else v for k, v in query.items()},
                                       "body": body if body is not None else raw.decode("utf-8", "replace")})
            if not path.startswith("/_standin/"):
                STATE.tick += 1
                STATE.age_operations()
            STATE.reconcile()
            meta = METADATA_RE.fullmatch(path)
            if meta and self.command == "GET":
                return self._metadata(meta.group(1), meta.group(2), query)
            if body is None or not isinstance(body, dict):
                return self._send(400, invalid("Invalid JSON payload received.").body())
            refused = authorize(member, self.command, path)
            if refused is not None:
                return self._send(refused.code, refused.body())
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
    ap.add_argument("--page-size", type=int, default=2,
                    help="entries per page of listManagedInstances (Compute: at most 500)")
    args = ap.parse_args()
    global PAGE_SIZE
    PAGE_SIZE = max(1, args.page_size)
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
