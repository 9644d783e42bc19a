"""faasd's deviations from the published OpenFaaS gateway contract, in one place.

The contract test (faasd/tests/integration/contract.rs) runs schemathesis against the
published spec vendored beside this file (spec.openapi.yml) and a running faasd. Before
schemathesis reads the spec, `before_load_schema` below applies each deviation faasd makes on purpose; every
other difference between the spec and the daemon is a failure. The one deviation a schema
cannot express (a scale request's `serviceName` must match its path) is in
schemathesis.toml beside this file. Each function here is one
deviation, and its docstring says why faasd differs. Where the spec and what faas-cli
really sends disagree, faasd follows faas-cli (README, "OpenFaaS compatibility").

faasd's extensions are not deviations and are not exercised here: a deployment without
`image` is a process function started from `envProcess`; faasd's own routes
(`/system/status`, `/system/peers`, `/system/namespace/<ns>`) are not in the spec.
"""

import os

import schemathesis

# Function names, namespaces and secret names become DNS names (`<fn>.faas`), file names
# and cgroup names, so faasd takes DNS labels only.
DNS_LABEL = {
    "type": "string",
    "minLength": 1,
    "maxLength": 63,
    "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
}
# An empty namespace is the default one: older faas-cli versions send `namespace=`.
NAMESPACE = {**DNS_LABEL, "minLength": 0, "pattern": "^([a-z0-9]([a-z0-9-]*[a-z0-9])?)?$"}


def names_are_dns_labels(spec):
    """Names and namespaces are DNS labels (the spec takes any string).

    A function is reachable as `<name>.faas` and `<name>.<namespace>.faas`, and names become
    paths in faasd's state directory; anything else is refused with 400 naming the rule.
    """
    schemas = spec["components"]["schemas"]
    schemas["FunctionDeployment"]["properties"]["service"] = DNS_LABEL
    schemas["FunctionDeployment"]["properties"]["namespace"] = NAMESPACE
    schemas["DeleteFunctionRequest"]["properties"]["functionName"] = DNS_LABEL
    schemas["ScaleServiceRequest"]["properties"]["serviceName"] = DNS_LABEL
    schemas["ScaleServiceRequest"]["properties"]["namespace"] = NAMESPACE
    schemas["SecretDescription"]["properties"]["name"] = DNS_LABEL
    schemas["SecretDescription"]["properties"]["namespace"] = NAMESPACE
    for path in spec["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in ("functionName", "name"):
                    parameter["schema"] = DNS_LABEL
                elif parameter["name"] == "namespace":
                    # In a path (`/function/<fn>.<ns>`) it cannot be empty.
                    parameter["schema"] = DNS_LABEL if parameter["in"] == "path" else NAMESPACE


def invalid_input_is_400(spec):
    """Every operation that takes input may answer 400 with the reason.

    The spec lists 400 only for some; faasd validates names, queries and bodies everywhere
    and says what is wrong instead of answering 404 or 500.
    """
    for path in spec["paths"].values():
        for operation in path.values():
            if operation.get("parameters") or operation.get("requestBody"):
                operation["responses"].setdefault("400", {"description": "Invalid input"})


def unknown_fields_are_refused(spec):
    """Request bodies with fields faasd does not know are refused with 400.

    A misspelt field (`envvars`, `secret`) would otherwise deploy a function silently
    missing its setting. Every field the spec and faas-cli send is known.
    """
    schemas = spec["components"]["schemas"]
    for name in ("FunctionDeployment", "DeleteFunctionRequest", "ScaleServiceRequest"):
        schemas[name]["additionalProperties"] = False
    # Secret is an allOf of two objects; closed, it is one object with both sets of fields.
    secret = schemas["Secret"]
    secret.pop("allOf")
    secret["properties"] = {
        **schemas["SecretDescription"]["properties"],
        **schemas["SecretValues"]["properties"],
    }
    secret["required"] = ["name"]
    secret["additionalProperties"] = False
    schemas["SecretDescription"]["additionalProperties"] = False


def secrets_have_one_value(spec):
    """A secret has exactly one of `value` and `rawValue`, and neither is `null`.

    The spec lets both (or neither) through; which one would win is a guess faasd does not
    make for a credential.
    """
    schemas = spec["components"]["schemas"]
    schemas["Secret"]["oneOf"] = [
        {"required": ["value"], "not": {"required": ["rawValue"]}},
        {"required": ["rawValue"], "not": {"required": ["value"]}},
    ]


def faas_cli_request_shapes(spec):
    """Bodies as faas-cli sends them, where the spec differs.

    Newer faas-cli versions put the namespace of a removal in the body; scale requests
    carry the namespace in the query, not the body.
    """
    schemas = spec["components"]["schemas"]
    schemas["DeleteFunctionRequest"]["properties"]["namespace"] = NAMESPACE
    schemas["ScaleServiceRequest"]["required"] = ["replicas"]
    scale = spec["paths"]["/system/scale-function/{functionName}"]["post"]
    scale.setdefault("parameters", []).append(
        {"name": "namespace", "in": "query", "required": False, "schema": NAMESPACE}
    )


def faas_cli_response_shapes(spec):
    """Answers as faas-cli reads them, where the spec differs.

    Secrets are listed as an array (the spec shows one object); removing a secret answers
    200, since every faas-cli version reports the spec's 204 as an error; creating one that
    exists answers 409 (faas-cli then suggests `secret update`).
    """
    secrets = spec["paths"]["/system/secrets"]
    secrets["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/SecretDescription"},
    }
    responses = secrets["delete"]["responses"]
    responses["200"] = responses.pop("204")
    secrets["post"]["responses"]["409"] = {"description": "The secret exists; update it with PUT"}


def quantities_are_kubernetes_quantities(spec):
    """`limits` and `requests` are Kubernetes quantities (`128Mi`, `500m`, `0.5`).

    They become cgroup limits, so a value faasd cannot read is refused, not ignored: memory
    of at least 4Mi, CPU above zero, and no other resource.
    """
    resources = spec["components"]["schemas"]["FunctionResources"]
    resources["additionalProperties"] = False
    resources["properties"] = {
        # At least the 4Mi a container needs; empty means unset, as faas-cli omits it.
        "memory": {"type": "string", "pattern": "^(|([4-9]|[1-9][0-9]{1,4})Mi|[1-9][0-9]{0,2}Gi)$"},
        # Above zero: millicores or cores.
        "cpu": {"type": "string", "pattern": "^(|[1-9][0-9]{0,4}m|[1-9][0-9]{0,2}(\\.[0-9]{1,3})?)$"},
    }


def env_var_names(spec):
    """`envVars` names are environment variable names: not empty, without `=` or NUL."""
    env = spec["components"]["schemas"]["FunctionDeployment"]["properties"]["envVars"]
    env["propertyNames"] = {"minLength": 1, "pattern": "^[^=\\x00]+$"}


def deploying_an_existing_function_is_409(spec):
    """POST for a function that exists answers 409 (update it with PUT), not 202.

    faas-cli always tries PUT first and POSTs only after a 404, so it never meets this; a
    script that POSTs twice learns that the second did not replace the first.
    """
    spec["paths"]["/system/functions"]["post"]["responses"]["409"] = {
        "description": "The function exists; update it with PUT"
    }


def invocation_takes_every_method(spec):
    """`/function/<fn>` passes every method through to the function, not only POST, and
    answers 502 when the function cannot be reached or cannot start.

    Functions are HTTP servers: OpenFaaS's gateway hands GET, PUT, DELETE… to them, and
    faasd does the same (asynchronous calls stay POST only). A call to a crash-looping
    function gets 502 with the function's last error at once, instead of waiting in the
    accept queue until the client gives up.
    """
    for path in ("/function/{functionName}", "/function/{functionName}.{namespace}"):
        operations = spec["paths"][path]
        operations["post"]["responses"]["502"] = {
            "description": "The function cannot be reached or cannot start"
        }
        for method in ("get", "put", "delete", "patch", "head", "options", "trace"):
            operations[method] = {
                **operations["post"],
                "operationId": operations["post"]["operationId"] + method.capitalize(),
            }


def log_requests(spec):
    """Log requests: an empty `since` means no lower bound (faas-cli may send `since=`), and
    `follow` is left out here: a followed log is an answer that never ends, which the log
    tests check on their own."""
    logs = spec["paths"]["/system/logs"]["get"]
    logs["parameters"] = [p for p in logs["parameters"] if p["name"] != "follow"]
    for p in logs["parameters"]:
        if p["name"] == "since":
            p["schema"] = {"anyOf": [p["schema"], {"type": "string", "maxLength": 0}]}


def no_registry_credentials(spec):
    """`registryAuth` is refused with 400, not ignored as the spec says.

    faasd takes registry credentials from `<state-dir>/.docker/config.json`, as OpenFaaS's
    faasd does, never from a deployment; a caller who sends them is told where they go.
    """
    del spec["components"]["schemas"]["FunctionDeployment"]["properties"]["registryAuth"]


def no_alertmanager_route(spec):
    """No `/system/alert`: faasd scales on demand (a connection starts a stopped function;
    idle functions stop), so it takes no AlertManager webhook and answers 404."""
    del spec["paths"]["/system/alert"]


DEVIATIONS = [
    names_are_dns_labels,
    invalid_input_is_400,
    unknown_fields_are_refused,
    faas_cli_request_shapes,
    faas_cli_response_shapes,
    quantities_are_kubernetes_quantities,
    secrets_have_one_value,
    env_var_names,
    invocation_takes_every_method,
    log_requests,
    deploying_an_existing_function_is_409,
    no_registry_credentials,
    no_alertmanager_route,
]


@schemathesis.hook
def before_load_schema(context, raw_schema):
    for deviation in DEVIATIONS:
        deviation(raw_schema)


@schemathesis.hook
def map_body(context, body):
    """The test's namespace reaches no registry: a generated deployment names the image the
    test imported into containerd, so it gets as far as a real container. (The spec's own
    example, `functions/nodeinfo:latest` with `secret-name-1`, is sent as it is: the test
    tags the sample image with that name and creates that secret first.)"""
    if not isinstance(body, dict):
        return body
    image = os.environ.get("FAASD_CONTRACT_IMAGE")
    if image and isinstance(body.get("image"), str):
        body["image"] = image
        # A deployment may only name secrets that exist (400 otherwise), which the spec
        # cannot say; generated ones name none.
        body.pop("secrets", None)
    env = body.get("envVars")
    if isinstance(env, dict):
        # `env_var_names` above says this, but not every generation phase honours
        # `propertyNames`.
        body["envVars"] = {k: v for k, v in env.items() if k and "=" not in k and "\x00" not in k}
    return body
