"""The metadata-definition and task schemas, exactly as Glance 33 serves them (copied from a
running Glance: /v2/schemas/metadefs/* and /v2/schemas/task(s)); request bodies are checked
against them as Glance checks them.

They are composed from shared pieces the way Glance builds them (glance/api/v2/metadef_*.py:
``get_schema_definitions()``, ``_get_base_properties()``, ``get_collection_schema()``). Every
builder returns fresh dicts, so no two schemas share a mutable object. Keys are kept in sorted
order at every level, as in the served copy."""

from __future__ import annotations

from typing import Any

_Schema = dict[str, Any]

_PROPERTY_TYPES = ('array', 'boolean', 'integer', 'number', 'object', 'string', None)


def _string(**extra: Any) -> _Schema:
    return {**extra, 'type': 'string'}


def _ref(name: str) -> _Schema:
    return {'$ref': f'#/definitions/{name}'}


def _timestamp(description: str) -> _Schema:
    return {'description': description, 'format': 'date-time', 'readOnly': True, 'type': 'string'}


def _read_only_string() -> _Schema:
    return {'readOnly': True, 'type': 'string'}


def _name(max_length: int = 80, **extra: Any) -> _Schema:
    return {**extra, 'maxLength': max_length, 'type': 'string'}


# -- definitions (glance/api/v2/metadef_namespaces.py / metadef_properties.py) -----------------

def _positive_integer_definitions() -> _Schema:
    return {'positiveInteger': {'minimum': 0, 'type': 'integer'},
            'positiveIntegerDefault0': {'allOf': [_ref('positiveInteger'), {'default': 0}]}}


def _string_array(min_items: int | None = None) -> _Schema:
    schema: _Schema = {'items': _string()}
    if min_items is not None:
        schema['minItems'] = min_items
    schema.update(type='array', uniqueItems=True)
    return schema


def _property_fields() -> _Schema:
    """The fields of one property definition (``_get_base_properties()`` of metadef_properties)."""
    return {'additionalItems': {'type': 'boolean'},
            'default': {},
            'description': _string(),
            'enum': {'type': 'array'},
            'items': {'properties': {'enum': {'type': 'array'},
                                     'type': {'enum': list(_PROPERTY_TYPES), 'type': 'string'}},
                      'type': 'object'},
            'maxItems': _ref('positiveInteger'),
            'maxLength': _ref('positiveInteger'),
            'maximum': {'type': 'number'},
            'minItems': _ref('positiveIntegerDefault0'),
            'minLength': _ref('positiveIntegerDefault0'),
            'minimum': {'type': 'number'},
            'name': _name(),
            'operators': {'items': _string(), 'type': 'array'},
            'pattern': {'format': 'regex', 'type': 'string'},
            'readonly': {'type': 'boolean'},
            'required': _ref('stringArray'),
            'title': _string(),
            'type': {'enum': list(_PROPERTY_TYPES), 'type': 'string'},
            'uniqueItems': {'default': False, 'type': 'boolean'}}


def _namespace_definitions() -> _Schema:
    """``get_schema_definitions()`` of metadef_namespaces (shared by namespace and object schemas)."""
    return {**_positive_integer_definitions(),
            'property': {'additionalProperties': {'properties': _property_fields(),
                                                  'required': ['title', 'type'],
                                                  'type': 'object'},
                         'type': 'object'},
            'stringArray': _string_array()}


def _property_definitions() -> _Schema:
    """``get_schema_definitions()`` of metadef_properties."""
    return {**_positive_integer_definitions(), 'stringArray': _string_array(min_items=1)}


# -- entity schemas ---------------------------------------------------------------------------

def _entity(name: str, properties: _Schema, required: list[str], definitions: _Schema | None = None) -> _Schema:
    schema: _Schema = {'additionalProperties': False}
    if definitions is not None:
        schema['definitions'] = definitions
    schema.update(name=name, properties=properties, required=required)
    return schema


def _without(schema: _Schema, *keys: str) -> _Schema:
    return {key: value for key, value in schema.items() if key not in keys}


def _namespace() -> _Schema:
    return _entity('namespace', {
        'created_at': _timestamp('Date and time of namespace creation'),
        'description': _name(500, description='Provides a user friendly description of the namespace.'),
        'display_name': _name(description='The user friendly name for the namespace. Used by UI if available.'),
        'namespace': _name(description='The unique namespace text.'),
        'objects': {'items': {'properties': {'description': _string(),
                                             'name': _string(),
                                             'properties': _ref('property'),
                                             'required': _ref('stringArray')},
                              'type': 'object'},
                    'type': 'array'},
        'owner': _name(255, description='Owner of the namespace.'),
        'properties': _ref('property'),
        'protected': {'description': 'If true, namespace will not be deletable.', 'type': 'boolean'},
        'resource_type_associations': {'items': {'properties': {'name': _string(),
                                                                'prefix': _string(),
                                                                'properties_target': _string()},
                                                 'type': 'object'},
                                       'type': 'array'},
        'schema': _read_only_string(),
        'self': _read_only_string(),
        'tags': {'items': {'properties': {'name': _string()}, 'type': 'object'}, 'type': 'array'},
        'updated_at': _timestamp('Date and time of the last namespace modification'),
        'visibility': {'description': 'Scope of namespace accessibility.',
                       'enum': ['public', 'private'],
                       'type': 'string'},
    }, ['namespace'], _namespace_definitions())


def _object() -> _Schema:
    return _entity('object', {
        'created_at': _timestamp('Date and time of object creation'),
        'description': _string(),
        'name': _name(),
        'properties': _ref('property'),
        'required': _ref('stringArray'),
        'schema': _read_only_string(),
        'self': _read_only_string(),
        'updated_at': _timestamp('Date and time of the last object modification'),
    }, ['name'], _namespace_definitions())


def _property() -> _Schema:
    return _entity('property', _property_fields(), ['type', 'title', 'name'], _property_definitions())


def _resource_type() -> _Schema:
    return _entity('resource_type_association', {
        'created_at': _timestamp('Date and time of resource type association'),
        'name': _name(description='Resource type names should be aligned with Heat resource types whenever '
                                  'possible: https://docs.openstack.org/heat/latest/template_guide/openstack.html'),
        'prefix': _name(description='Specifies the prefix to use for the given resource type. Any properties in '
                                    'the namespace should be prefixed with this prefix when being applied to the '
                                    'specified resource type. Must include prefix separator (e.g. a colon :).'),
        'properties_target': _name(description='Some resource types allow more than one key / value pair per '
                                               'instance.  For example, Cinder allows user and image metadata on '
                                               'volumes. Only the image properties metadata is evaluated by Nova '
                                               '(scheduling or drivers). This property allows a namespace target '
                                               'to remove the ambiguity.'),
        'updated_at': _timestamp('Date and time of the last resource type association modification'),
    }, ['name'])


def _tag() -> _Schema:
    return _entity('tag', {
        'created_at': _timestamp('Date and time of tag creation'),
        'name': _name(),
        'updated_at': _timestamp('Date and time of the last tag modification'),
    }, ['name'])


_TASK_LIST_HIDDEN = ('input', 'message', 'result')  # glance/api/v2/tasks.py: not shown in the task list


def _task() -> _Schema:
    return {'name': 'task', 'properties': {
        'created_at': _string(description='Datetime when this resource was created'),
        'expires_at': {'description': 'Datetime when this resource would be subject to removal',
                       'type': ['null', 'string']},
        'id': _string(description='An identifier for the task',
                      pattern='^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}'
                              '-([0-9a-fA-F]){12}$'),
        'image_id': _string(description='Image associated with the task'),
        'input': {'description': 'The parameters required by task, JSON blob', 'type': ['null', 'object']},
        'message': _string(description='Human-readable informative message only included when appropriate '
                                       '(usually on failure)'),
        'owner': _string(description='An identifier for the owner of this task'),
        'request_id': _string(description='Human-readable informative request-id'),
        'result': {'description': 'The result of current task, JSON blob', 'type': ['null', 'object']},
        'schema': _read_only_string(),
        'self': _read_only_string(),
        'status': _string(description='The current status of this task',
                          enum=['pending', 'processing', 'success', 'failure']),
        'type': _string(description='The type of task represented by this content',
                        enum=['import', 'api_image_import', 'location_import']),
        'updated_at': _string(description='Datetime when this resource was updated'),
        'user_id': _string(description='User associated with the task'),
    }}


# -- collection schemas (glance.schema.CollectionSchema / get_collection_schema()) ------------

def _collection(name: str, member_key: str, member: _Schema, definitions: _Schema | None = None,
                paged: bool = True) -> _Schema:
    rels = ('first', 'next', 'schema') if paged else ('schema',)
    schema: _Schema = {} if definitions is None else {'definitions': definitions}
    schema['links'] = [{'href': '{%s}' % rel, 'rel': 'describedby' if rel == 'schema' else rel} for rel in rels]
    schema['name'] = name
    schema['properties'] = dict(sorted({member_key: member, **{rel: _string() for rel in rels}}.items()))
    return schema


def _array_of(item: _Schema) -> _Schema:
    return {'items': item, 'type': 'array'}


def _build() -> dict[str, _Schema]:
    task_list_item = {'name': 'task', 'properties': _without(_task()['properties'], *_TASK_LIST_HIDDEN)}
    property_list_item = {**_without(_property(), 'definitions'), 'required': ['type', 'title']}
    return {
        'namespace': _namespace(),
        'namespaces': _collection('namespaces', 'namespaces', _array_of(_without(_namespace(), 'definitions')),
                                  _namespace_definitions()),
        'object': _object(),
        'objects': _collection('objects', 'objects', _array_of(_without(_object(), 'definitions')),
                               _namespace_definitions()),
        'properties': _collection('properties', 'properties',
                                  {'additionalProperties': property_list_item, 'type': 'object'},
                                  _property_definitions()),
        'property': _property(),
        'resource_type': _resource_type(),
        'resource_types': _collection('resource_type_associations', 'resource_type_associations',
                                      _array_of(_resource_type())),
        'tag': _tag(),
        'tags': _collection('tags', 'tags', _array_of(_tag())),
        'task': _task(),
        'tasks': _collection('tasks', 'tasks', _array_of(task_list_item), paged=False),
    }


SCHEMAS: dict[str, Any] = _build()
