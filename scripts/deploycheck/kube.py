"""Rendered objects against Kubernetes: strict schema validation
(kubernetes-validate) and the references between objects (selectors, port
names, object names) that must point at each other."""

import kubernetes_validate.utils as kv

from .runner import must

# Custom resources: no schema in kubernetes-validate; checked by cross_refs.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def validate(ctx, docs):
    crds = 0
    for d in docs:
        what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kv.validate(d, ctx.kube, strict=True)
        except kv.SchemaNotFoundError:
            known = (d["apiVersion"], d["kind"]) in CRDS
            must(known, f"{what}: no schema for {d['apiVersion']} in Kubernetes {ctx.kube}")
            crds += 1
        except kv.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            raise AssertionError(f"{what}: {path}: {e.message}") from None
    crd_note = f"; {crds} custom resource(s) without schema, checked under references" if crds else ""
    return f"{len(docs) - crds} objects, strict, Kubernetes {ctx.kube}{crd_note}"


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def cross_refs(docs):
    """Selectors, port names and object names that must point at each other."""
    by = {}
    for d in docs:
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deps = by.get("Deployment", {})
    must(deps, "no Deployment rendered")
    svcs = by.get("Service", {})
    pod_ports = {}
    for dep in deps.values():
        tpl = dep["spec"]["template"]
        must(
            labels_match(dep["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"]),
            f"Deployment {dep['metadata']['name']}: selector does not match its pods",
        )
        pod_ports[dep["metadata"]["name"]] = (
            tpl["metadata"]["labels"],
            {p["name"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])},
        )
    for s in svcs.values():
        hits = [ports for labels, ports in pod_ports.values() if labels_match(s["spec"]["selector"], labels)]
        must(len(hits) == 1, f"Service {s['metadata']['name']}: selects {len(hits)} Deployments")
        for p in s["spec"]["ports"]:
            must(p["targetPort"] in hits[0], f"Service {s['metadata']['name']}: no container port {p['targetPort']}")
    for h in by.get("HorizontalPodAutoscaler", {}).values():
        target = h["spec"]["scaleTargetRef"]["name"]
        must(target in deps, "HPA: target Deployment missing")
        must("replicas" not in deps[target]["spec"], "HPA on a Deployment with fixed replicas")
    for p in by.get("PodDisruptionBudget", {}).values():
        sel = p["spec"]["selector"]["matchLabels"]
        must(any(labels_match(sel, labels) for labels, _ in pod_ports.values()), "PDB selects no pods")
    for i in by.get("Ingress", {}).values():
        for r in i["spec"]["rules"]:
            for path in r["http"]["paths"]:
                b = path["backend"]["service"]
                must(b["name"] in svcs, f"Ingress: no Service {b['name']}")
                must(b["port"]["name"] in {p["name"] for p in svcs[b["name"]]["spec"]["ports"]}, "Ingress: bad port")
    for n in by.get("NetworkPolicy", {}).values():
        sel = n["spec"]["podSelector"]["matchLabels"]
        hits = [ports for labels, ports in pod_ports.values() if labels_match(sel, labels)]
        must(len(hits) == 1, f"NetworkPolicy {n['metadata']['name']}: selects {len(hits)} Deployments")
        for rule in n["spec"]["ingress"]:
            for p in rule["ports"]:
                must(p["port"] in hits[0], f"NetworkPolicy {n['metadata']['name']}: no port {p['port']}")
    for m in by.get("ServiceMonitor", {}).values():
        spec = m["spec"]
        targets = [s for s in svcs.values() if labels_match(spec["selector"]["matchLabels"], s["metadata"]["labels"])]
        must(len(targets) == 1, f"ServiceMonitor: selects {len(targets)} Services")
        names = {p["name"] for p in targets[0]["spec"]["ports"]}
        for e in spec["endpoints"]:
            must(e["port"] in names and e.get("path") == "/metrics", f"ServiceMonitor: bad endpoint {e}")
    cms = {c["metadata"]["name"]: c for c in by.get("ConfigMap", {}).values()}
    for dep in deps.values():
        spec = dep["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "configMap" in v and v["name"] == "config":
                must(v["configMap"]["name"] in cms, f"volume config: no ConfigMap {v['configMap']['name']}")
    return None
