"""Metadata definitions (Glance's metadefs API): namespaces and what they hold — properties,
objects, tags — and the resource types they apply to. Reads: anyone who may see the namespace
(public, or its owner's project, or an admin); writes: administrators (Glance's default
policy, ``metadef_admin``). A protected namespace and its contents cannot be deleted (403).

The catalog is small (tens of namespaces): a listing is filtered in the database, sorted and
paged after its marker here (the same order on SQLite and PostgreSQL, NULLs included)."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence, TypeVar

import jsonschema
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.context import RequestContext
from freezeframe.common.policy import Policy
from freezeframe.common.strict import parse_uint, shown, text_problem
from freezeframe.common.timeutil import isotime, utcnow
from freezeframe.db.session import Database
from freezeframe.images.metadef_model import (MetadefAssociation, MetadefNamespace, MetadefObject, MetadefProperty,
                                              MetadefResourceType, MetadefTag)
from freezeframe.images.metadef_schemas import SCHEMAS

T = TypeVar("T")
NS_PATH = "/v2/metadefs/namespaces"
SORT_KEYS = ("created_at", "updated_at", "namespace", "display_name")
READ_ONLY = ("self", "schema", "created_at", "updated_at")
NAME_MAX = 80
_VALIDATORS = {name: jsonschema.Draft4Validator({"type": "object", **SCHEMAS[name]})
               for name in ("namespace", "object", "property", "tag", "resource_type")}


def validate(kind: str, body: Any) -> dict[str, Any]:
    """Glance's checks of a request body: a JSON object, no read-only attribute (403), valid
    against the served schema (400, naming where)."""
    if not isinstance(body, dict):
        raise errors.Invalid(f"The request body must be a JSON object (a metadata definition {kind})")
    for key in READ_ONLY:
        if key in body:
            raise errors.Forbidden(f"Attribute '{key}' is read-only.")
    error = jsonschema.exceptions.best_match(_VALIDATORS[kind].iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or kind
        raise errors.Invalid(f"Provided object does not match schema '{kind}': {where}: {error.message[:300]}")
    return body


def _check_lengths(body: dict[str, Any]) -> None:
    """The names a namespace's body nests (its schema leaves their length open): at most 80
    characters, as the columns that keep them."""
    names = [("properties", k) for k in body.get("properties") or {}]
    names += [(key, item.get(field)) for key in ("objects", "tags", "resource_type_associations")
              for item in body.get(key) or [] for field in ("name", "prefix", "properties_target")
              if isinstance(item, dict) and isinstance(item.get(field), str)]
    for where, name in names:
        if len(name) > NAME_MAX:
            raise errors.Invalid(f"Invalid value in '{where}': {shown(name)} is longer than {NAME_MAX} characters")


def _checked_name(what: str, value: str) -> str:
    """A name from the URL: text the database can look up (else nothing has it: 404)."""
    if text_problem(value) is not None or len(value) > 255:
        raise errors.NotFound(f"Metadata definition {what}={shown(value)} was not found.")
    return value


def _said(value: str) -> str:
    """A name for an error message: as it is when printable and short, else quoted and cut."""
    return value if value.isprintable() and len(value) <= 100 else shown(value, 100)


# -- views ------------------------------------------------------------------------------------

def _stamps(row: Any) -> dict[str, Any]:
    return {"created_at": isotime(row.created_at), "updated_at": isotime(row.updated_at)}


def association_view(assoc: MetadefAssociation, name: str) -> dict[str, Any]:
    view: dict[str, Any] = {"name": name}
    if assoc.prefix is not None:
        view["prefix"] = assoc.prefix
    if assoc.properties_target is not None:
        view["properties_target"] = assoc.properties_target
    return {**view, **_stamps(assoc)}


def namespace_view(ns: MetadefNamespace, associations: list[dict[str, Any]]) -> dict[str, Any]:
    view: dict[str, Any] = {"namespace": ns.namespace}
    for key in ("display_name", "description"):
        if getattr(ns, key) is not None:
            view[key] = getattr(ns, key)
    view.update(visibility=ns.visibility, protected=ns.protected)
    if ns.owner is not None:
        view["owner"] = ns.owner
    view.update(_stamps(ns))
    if associations:
        view["resource_type_associations"] = associations
    view.update({"self": f"{NS_PATH}/{ns.namespace}", "schema": "/v2/schemas/metadefs/namespace"})
    return view


def object_view(ns: str, obj: MetadefObject) -> dict[str, Any]:
    view: dict[str, Any] = {"name": obj.name, "required": json.loads(obj.required_json)}
    if obj.description is not None:
        view["description"] = obj.description
    view["properties"] = json.loads(obj.properties_json)
    return {**view, **_stamps(obj), "self": f"{NS_PATH}/{ns}/objects/{obj.name}",
            "schema": "/v2/schemas/metadefs/object"}


def property_view(prop: MetadefProperty) -> dict[str, Any]:
    return {"name": prop.name, **json.loads(prop.schema_json)}


def tag_view(tag: MetadefTag) -> dict[str, Any]:
    return {"name": tag.name, **_stamps(tag)}


class MetadefService:
    def __init__(self, db: Database, policy: Policy) -> None:
        self.db = db
        self.policy = policy

    async def _run(self, fn: Callable[[Session], T]) -> T:
        return await self.db.run(fn)

    # -- lookups -------------------------------------------------------------------------------

    def _namespace(self, session: Session, ctx: RequestContext, name: str) -> MetadefNamespace:
        _checked_name("namespace", name)
        ns = session.scalar(select(MetadefNamespace).where(MetadefNamespace.namespace == name))
        if ns is None or not self._visible(ctx, ns):
            raise errors.NotFound(f"Metadata definition namespace={name} was not found.")
        return ns

    @staticmethod
    def _visible(ctx: RequestContext, ns: MetadefNamespace) -> bool:
        return ns.visibility == "public" or ctx.is_admin or (ns.owner is not None and ns.owner == ctx.project_id)

    def _writable(self, session: Session, ctx: RequestContext, name: str, rule: str) -> MetadefNamespace:
        self.policy.authorize(ctx, rule)
        return self._namespace(session, ctx, name)

    @staticmethod
    def _not_protected(ns: MetadefNamespace, what: str) -> None:
        if ns.protected:
            raise errors.Forbidden(f"Metadata definition {what} is protected and cannot be deleted.")

    @staticmethod
    def _associations(session: Session, ns_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {i: [] for i in ns_ids}
        if ns_ids:
            rows = session.execute(select(MetadefAssociation, MetadefResourceType.name)
                                   .join(MetadefResourceType,
                                         MetadefResourceType.id == MetadefAssociation.resource_type_id)
                                   .where(MetadefAssociation.namespace_id.in_(ns_ids))
                                   .order_by(MetadefAssociation.created_at, MetadefResourceType.name))
            for assoc, name in rows:
                out[assoc.namespace_id].append(association_view(assoc, name))
        return out

    @staticmethod
    def _resource_type(session: Session, name: str, create: bool) -> MetadefResourceType | None:
        found = session.scalar(select(MetadefResourceType).where(MetadefResourceType.name == name))
        if found is None and create:
            found = MetadefResourceType(name=name, protected=False, created_at=utcnow(), updated_at=utcnow())
            session.add(found)
            session.flush()
        return found

    # -- namespaces ----------------------------------------------------------------------------

    async def list_namespaces(self, ctx: RequestContext, params: Sequence[tuple[str, str]],
                              default_limit: int, max_limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the namespaces the caller sees, and the marker of the next (None: last page)."""
        self.policy.authorize(ctx, "get_metadef_namespaces")
        single = dict(params)
        for key, value in single.items():
            if text_problem(key) is not None or text_problem(value) is not None:
                raise errors.Invalid(f"Invalid query parameter {shown(key)}")
        limit = min(parse_uint("limit", single["limit"]), max_limit) if "limit" in single else default_limit
        sort_key, sort_dir = single.get("sort_key", "created_at"), single.get("sort_dir", "desc")
        if sort_key not in SORT_KEYS:
            raise errors.Invalid(f"Invalid sort key: {shown(sort_key)}; use one of {', '.join(SORT_KEYS)}")
        if sort_dir not in ("asc", "desc"):
            raise errors.Invalid(f"Invalid sort direction: {shown(sort_dir)}")
        visibility = single.get("visibility")
        if visibility and visibility not in ("public", "private"):
            raise errors.Invalid(f"Invalid visibility value: {shown(visibility)}")
        types = [t for t in single.get("resource_types", "").split(",") if t]
        marker = single.get("marker")

        def key(ns: MetadefNamespace) -> tuple[Any, ...]:
            # sorted here, the same on every database (SQLite and PostgreSQL place NULLs apart)
            value = getattr(ns, sort_key)
            return (value is None, value if value is not None else "", ns.id)

        def find(session: Session) -> tuple[list[dict[str, Any]], str | None]:
            after = self._namespace(session, ctx, marker) if marker is not None else None
            stmt = select(MetadefNamespace)
            if not ctx.is_admin:
                stmt = stmt.where(or_(MetadefNamespace.visibility == "public",
                                      MetadefNamespace.owner == ctx.project_id))
            if visibility:
                stmt = stmt.where(MetadefNamespace.visibility == visibility)
            if types:
                stmt = stmt.where(MetadefNamespace.id.in_(
                    select(MetadefAssociation.namespace_id).join(
                        MetadefResourceType, MetadefResourceType.id == MetadefAssociation.resource_type_id)
                    .where(MetadefResourceType.name.in_(types))))
            rows = sorted(session.scalars(stmt), key=key, reverse=sort_dir == "desc")
            if after is not None:       # those past the marker in this order, whether or not it matches
                mark = key(after)
                rows = [r for r in rows if (key(r) > mark if sort_dir == "asc" else key(r) < mark)]
            page = rows[:limit]
            assocs = self._associations(session, [r.id for r in page])
            views = [namespace_view(r, assocs[r.id]) for r in page]
            more = bool(page) and len(page) == limit
            return views, (page[-1].namespace if more else None)

        return await self._run(find)

    async def show_namespace(self, ctx: RequestContext, name: str, resource_type: str | None = None) -> dict[str, Any]:
        self.policy.authorize(ctx, "get_metadef_namespace")

        def find(session: Session) -> dict[str, Any]:
            ns = self._namespace(session, ctx, name)
            view = namespace_view(ns, self._associations(session, [ns.id])[ns.id])
            prefix = ""
            if resource_type:
                prefix = next((a.get("prefix", "") for a in view.get("resource_type_associations", [])
                               if a["name"] == resource_type), "")
            props = {prefix + p.name: json.loads(p.schema_json) for p in self._children(session, MetadefProperty, ns)}
            if props:
                view["properties"] = props
            objects = [object_view(ns.namespace, o) for o in self._children(session, MetadefObject, ns)]
            if objects:
                view["objects"] = objects
            tags = [{"name": t.name} for t in self._children(session, MetadefTag, ns)]
            if tags:
                view["tags"] = tags
            return view

        return await self._run(find)

    @staticmethod
    def _children(session: Session, model: Any, ns: MetadefNamespace) -> list[Any]:
        return list(session.scalars(select(model).where(model.namespace_id == ns.id).order_by(model.id)))

    async def create_namespace(self, ctx: RequestContext, body: Any) -> dict[str, Any]:
        self.policy.authorize(ctx, "add_metadef_namespace")
        body = validate("namespace", body)
        _check_lengths(body)

        def create(session: Session) -> dict[str, Any]:
            name = body["namespace"]
            if session.scalar(select(MetadefNamespace.id).where(MetadefNamespace.namespace == name)) is not None:
                raise errors.Conflict(f"The metadata definition namespace={name} already exists.")
            now = utcnow()
            ns = MetadefNamespace(namespace=name, display_name=body.get("display_name"),
                                  description=body.get("description"),
                                  visibility=body.get("visibility", "private"), protected=body.get("protected", False),
                                  owner=body.get("owner", ctx.project_id), created_at=now, updated_at=now)
            session.add(ns)
            session.flush()
            for assoc in body.get("resource_type_associations", []):
                self._associate(session, ns, assoc)
            for prop_name, schema in (body.get("properties") or {}).items():
                session.add(MetadefProperty(namespace_id=ns.id, name=prop_name, schema_json=json.dumps(schema),
                                            created_at=now, updated_at=now))
            for obj in body.get("objects", []):
                if "name" not in obj:
                    raise errors.Invalid("Every object of a namespace needs a 'name'")
                self._add_object(session, ns, obj)
            seen = set()
            for tag in body.get("tags", []):
                if "name" not in tag or tag["name"] in seen:
                    raise errors.Invalid("Every tag of a namespace needs a 'name', each name once")
                seen.add(tag["name"])
                session.add(MetadefTag(namespace_id=ns.id, name=tag["name"], created_at=now, updated_at=now))
            session.flush()
            view = namespace_view(ns, [{k: v for k, v in a.items() if k not in ("created_at", "updated_at")}
                                       for a in self._associations(session, [ns.id])[ns.id]])
            for key in ("properties", "objects", "tags"):
                if key in body:
                    view[key] = body[key]
            return view

        return await self._run(create)

    async def update_namespace(self, ctx: RequestContext, name: str, body: Any) -> dict[str, Any]:
        """PUT replaces the namespace's own attributes (those not given return to their
        defaults, as Glance's); its contents stay."""
        body = validate("namespace", body)

        def update(session: Session) -> dict[str, Any]:
            ns = self._writable(session, ctx, name, "modify_metadef_namespace")
            new_name = body["namespace"]
            if new_name != ns.namespace and session.scalar(
                    select(MetadefNamespace.id).where(MetadefNamespace.namespace == new_name)) is not None:
                raise errors.Conflict(f"The metadata definition namespace={new_name} already exists.")
            ns.namespace, ns.display_name, ns.description = new_name, body.get("display_name"), body.get("description")
            ns.visibility, ns.protected = body.get("visibility", "private"), body.get("protected", False)
            ns.owner = body.get("owner", ns.owner)
            ns.updated_at = utcnow()
            session.flush()
            return namespace_view(ns, [])

        return await self._run(update)

    async def delete_namespace(self, ctx: RequestContext, name: str) -> None:
        def remove(session: Session) -> None:
            ns = self._writable(session, ctx, name, "delete_metadef_namespace")
            self._not_protected(ns, f"namespace {ns.namespace}")
            for model in (MetadefAssociation, MetadefObject, MetadefProperty, MetadefTag):
                session.execute(delete(model).where(model.namespace_id == ns.id))
            session.delete(ns)

        await self._run(remove)

    async def delete_contents(self, ctx: RequestContext, name: str, kind: str) -> None:
        """DELETE .../objects, .../properties, .../tags: all of that kind in the namespace."""
        model, rule = {"objects": (MetadefObject, "delete_metadef_object"),
                       "properties": (MetadefProperty, "remove_metadef_property"),
                       "tags": (MetadefTag, "delete_metadef_tags")}[kind]

        def remove(session: Session) -> None:
            ns = self._writable(session, ctx, name, rule)
            self._not_protected(ns, f"namespace {ns.namespace}")
            session.execute(delete(model).where(model.namespace_id == ns.id))
            ns.updated_at = utcnow()

        await self._run(remove)

    # -- resource types ------------------------------------------------------------------------

    async def list_resource_types(self, ctx: RequestContext) -> list[dict[str, Any]]:
        self.policy.authorize(ctx, "list_metadef_resource_types")

        def find(session: Session) -> list[dict[str, Any]]:
            rows = session.scalars(select(MetadefResourceType).order_by(MetadefResourceType.name))
            return [{"name": r.name, **_stamps(r)} for r in rows]

        return await self._run(find)

    async def list_associations(self, ctx: RequestContext, name: str) -> list[dict[str, Any]]:
        self.policy.authorize(ctx, "get_metadef_resource_type")

        def find(session: Session) -> list[dict[str, Any]]:
            ns = self._namespace(session, ctx, name)
            return self._associations(session, [ns.id])[ns.id]

        return await self._run(find)

    def _associate(self, session: Session, ns: MetadefNamespace, body: dict[str, Any]) -> dict[str, Any]:
        rtype = self._resource_type(session, body["name"], create=True)
        assert rtype is not None
        if session.get(MetadefAssociation, (ns.id, rtype.id)) is not None:
            raise errors.Conflict(f"The metadata definition resource-type association of resource-type={rtype.name} "
                                  f"to namespace={ns.namespace}, already exists.")
        now = utcnow()
        assoc = MetadefAssociation(namespace_id=ns.id, resource_type_id=rtype.id, prefix=body.get("prefix"),
                                   properties_target=body.get("properties_target"), created_at=now, updated_at=now)
        session.add(assoc)
        session.flush()
        return association_view(assoc, rtype.name)

    async def add_association(self, ctx: RequestContext, name: str, body: Any) -> dict[str, Any]:
        body = validate("resource_type", body)

        def add(session: Session) -> dict[str, Any]:
            ns = self._writable(session, ctx, name, "add_metadef_resource_type_association")
            return self._associate(session, ns, body)

        return await self._run(add)

    async def remove_association(self, ctx: RequestContext, name: str, resource_type: str) -> None:
        def remove(session: Session) -> None:
            ns = self._writable(session, ctx, name, "remove_metadef_resource_type_association")
            rtype = self._resource_type(session, _checked_name("resource_type", resource_type), create=False)
            if rtype is None:
                raise errors.NotFound(f"Failed to find resource type {resource_type} to delete")
            assoc = session.get(MetadefAssociation, (ns.id, rtype.id))
            if assoc is None:
                raise errors.NotFound(f"The metadata definition resource-type association of resource-type="
                                      f"{resource_type} to namespace={ns.namespace}, was not found.")
            self._not_protected(ns, f"resource-type-association {resource_type}")
            session.delete(assoc)

        await self._run(remove)

    # -- objects, properties, tags (one namespace's) -------------------------------------------

    def _add_object(self, session: Session, ns: MetadefNamespace, body: dict[str, Any]) -> MetadefObject:
        if session.scalar(select(MetadefObject.id).where(MetadefObject.namespace_id == ns.id,
                                                         MetadefObject.name == body["name"])) is not None:
            raise errors.Conflict(f"A metadata definition object with name={body['name']} already exists in "
                                  f"namespace={ns.namespace}.")
        now = utcnow()
        obj = MetadefObject(namespace_id=ns.id, name=body["name"], description=body.get("description"),
                            required_json=json.dumps(body.get("required", [])),
                            properties_json=json.dumps(body.get("properties", {})), created_at=now, updated_at=now)
        session.add(obj)
        session.flush()
        return obj

    def _child(self, session: Session, model: Any, ns: MetadefNamespace, name: str, what: str) -> Any:
        found = None
        if text_problem(name) is None and len(name) <= 255:
            found = session.scalar(select(model).where(model.namespace_id == ns.id, model.name == name))
        if found is None:       # Glance's words
            raise errors.NotFound(f"Could not find {'property' if what == 'property' else 'metadata ' + what} "
                                  f"{_said(name)}")
        return found

    async def list_children(self, ctx: RequestContext, name: str, kind: str) -> Any:
        rule = {"objects": "get_metadef_objects", "properties": "get_metadef_properties",
                "tags": "get_metadef_tags"}[kind]
        self.policy.authorize(ctx, rule)

        def find(session: Session) -> Any:
            ns = self._namespace(session, ctx, name)
            if kind == "objects":
                return [object_view(ns.namespace, o) for o in self._children(session, MetadefObject, ns)]
            if kind == "properties":
                return {p.name: json.loads(p.schema_json) for p in self._children(session, MetadefProperty, ns)}
            return [{"name": t.name} for t in reversed(self._children(session, MetadefTag, ns))]   # newest first

        return await self._run(find)

    async def show_child(self, ctx: RequestContext, name: str, kind: str, child: str) -> dict[str, Any]:
        model, what, rule, view = self._kind(kind)
        self.policy.authorize(ctx, rule.replace("*", "get"))

        def find(session: Session) -> dict[str, Any]:
            ns = self._namespace(session, ctx, name)
            return view(ns.namespace, self._child(session, model, ns, child, what))

        return await self._run(find)

    @staticmethod
    def _kind(kind: str) -> tuple[Any, str, str, Callable[[str, Any], dict[str, Any]]]:
        return {"objects": (MetadefObject, "object", "*_metadef_object", object_view),
                "properties": (MetadefProperty, "property", "*_metadef_property", lambda _ns, p: property_view(p)),
                "tags": (MetadefTag, "tag", "*_metadef_tag", lambda _ns, t: tag_view(t))}[kind]

    async def create_child(self, ctx: RequestContext, name: str, kind: str, body: Any) -> dict[str, Any]:
        """POST .../objects, .../properties (the body names it) or .../tags/{name}."""
        model, what, rule, view = self._kind(kind)
        body = validate(what, body)

        def create(session: Session) -> dict[str, Any]:
            ns = self._writable(session, ctx, name, rule.replace("*", "add"))
            if kind == "objects":
                return view(ns.namespace, self._add_object(session, ns, body))
            if session.scalar(select(model.id).where(model.namespace_id == ns.id,
                                                     model.name == body["name"])) is not None:
                raise errors.Conflict(f"A metadata {'definition ' if kind != 'tags' else ''}{what} with "
                                      f"name={body['name']} already exists in namespace={ns.namespace}.")
            now = utcnow()
            row = model(namespace_id=ns.id, name=body["name"], created_at=now, updated_at=now)
            if kind == "properties":
                row.schema_json = json.dumps({k: v for k, v in body.items() if k != "name"})
            session.add(row)
            ns.updated_at = now
            session.flush()
            return view(ns.namespace, row)

        return await self._run(create)

    async def update_child(self, ctx: RequestContext, name: str, kind: str, child: str, body: Any) -> dict[str, Any]:
        """PUT: replaces the definition (may rename it; a name taken in the namespace: 409)."""
        model, what, rule, view = self._kind(kind)
        body = validate(what, body)

        def update(session: Session) -> dict[str, Any]:
            ns = self._writable(session, ctx, name, rule.replace("*", "modify"))
            row = self._child(session, model, ns, child, what)
            if body["name"] != row.name and session.scalar(select(model.id).where(
                    model.namespace_id == ns.id, model.name == body["name"])) is not None:
                raise errors.Conflict(f"A metadata definition {what} with name={body['name']} already exists in "
                                      f"namespace={ns.namespace}.")
            row.name, row.updated_at = body["name"], utcnow()
            if kind == "objects":
                row.description = body.get("description")
                row.required_json = json.dumps(body.get("required", []))
                row.properties_json = json.dumps(body.get("properties", {}))
            elif kind == "properties":
                row.schema_json = json.dumps({k: v for k, v in body.items() if k != "name"})
            session.flush()
            return view(ns.namespace, row)

        return await self._run(update)

    async def delete_child(self, ctx: RequestContext, name: str, kind: str, child: str) -> None:
        model, what, rule, _view = self._kind(kind)
        action = "remove" if kind == "properties" else "delete"

        def remove(session: Session) -> None:
            ns = self._writable(session, ctx, name, rule.replace("*", action))
            row = self._child(session, model, ns, child, what)
            self._not_protected(ns, f"{what} {row.name}")
            session.delete(row)

        await self._run(remove)

    async def create_tags(self, ctx: RequestContext, name: str, body: Any, append: bool) -> list[dict[str, Any]]:
        """POST .../tags {"tags": [{"name"}, ...]}: replaces the namespace's tags (with
        ``X-Openstack-Append: true``, adds to them)."""
        if not isinstance(body, dict) or not isinstance(body.get("tags"), list):
            raise errors.Invalid("The request body must be a JSON object with a list 'tags' of {\"name\": ...}")
        names = []
        for tag in body["tags"]:
            validate("tag", tag)
            names.append(tag["name"])
        if len(set(names)) != len(names):
            raise errors.Conflict("A metadata tag with name={} is in the request twice: each tag once".format(
                next(n for n in names if names.count(n) > 1)))

        def create(session: Session) -> list[dict[str, Any]]:
            ns = self._writable(session, ctx, name, "add_metadef_tags")
            if not append:
                session.execute(delete(MetadefTag).where(MetadefTag.namespace_id == ns.id))
            else:
                have = set(session.scalars(select(MetadefTag.name).where(MetadefTag.namespace_id == ns.id,
                                                                          MetadefTag.name.in_(names))))
                if have:
                    raise errors.Conflict(f"A metadata tag with name={sorted(have)[0]} already exists "
                                          f"in namespace={ns.namespace}.")
            now = utcnow()
            session.add_all([MetadefTag(namespace_id=ns.id, name=n, created_at=now, updated_at=now) for n in names])
            ns.updated_at = now
            return [{"name": n} for n in names]

        return await self._run(create)
