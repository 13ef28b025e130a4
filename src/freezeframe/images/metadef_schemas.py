"""The metadata-definition and task schemas, exactly as Glance 33 serves them (copied from a
running Glance: /v2/schemas/metadefs/* and /v2/schemas/task(s)); request bodies are checked
against them as Glance checks them."""

from __future__ import annotations

from typing import Any

SCHEMAS: dict[str, Any] = {'namespace': {'additionalProperties': False,
               'definitions': {'positiveInteger': {'minimum': 0, 'type': 'integer'},
                               'positiveIntegerDefault0': {'allOf': [{'$ref': '#/definitions/positiveInteger'},
                                                                     {'default': 0}]},
                               'property': {'additionalProperties': {'properties': {'additionalItems': {'type': 'boolean'},
                                                                                    'default': {},
                                                                                    'description': {'type': 'string'},
                                                                                    'enum': {'type': 'array'},
                                                                                    'items': {'properties': {'enum': {'type': 'array'},
                                                                                                             'type': {'enum': ['array',
                                                                                                                               'boolean',
                                                                                                                               'integer',
                                                                                                                               'number',
                                                                                                                               'object',
                                                                                                                               'string',
                                                                                                                               None],
                                                                                                                      'type': 'string'}},
                                                                                              'type': 'object'},
                                                                                    'maxItems': {'$ref': '#/definitions/positiveInteger'},
                                                                                    'maxLength': {'$ref': '#/definitions/positiveInteger'},
                                                                                    'maximum': {'type': 'number'},
                                                                                    'minItems': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                    'minLength': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                    'minimum': {'type': 'number'},
                                                                                    'name': {'maxLength': 80,
                                                                                             'type': 'string'},
                                                                                    'operators': {'items': {'type': 'string'},
                                                                                                  'type': 'array'},
                                                                                    'pattern': {'format': 'regex',
                                                                                                'type': 'string'},
                                                                                    'readonly': {'type': 'boolean'},
                                                                                    'required': {'$ref': '#/definitions/stringArray'},
                                                                                    'title': {'type': 'string'},
                                                                                    'type': {'enum': ['array',
                                                                                                      'boolean',
                                                                                                      'integer',
                                                                                                      'number',
                                                                                                      'object',
                                                                                                      'string',
                                                                                                      None],
                                                                                             'type': 'string'},
                                                                                    'uniqueItems': {'default': False,
                                                                                                    'type': 'boolean'}},
                                                                     'required': ['title', 'type'],
                                                                     'type': 'object'},
                                            'type': 'object'},
                               'stringArray': {'items': {'type': 'string'},
                                               'type': 'array',
                                               'uniqueItems': True}},
               'name': 'namespace',
               'properties': {'created_at': {'description': 'Date and time of namespace creation',
                                             'format': 'date-time',
                                             'readOnly': True,
                                             'type': 'string'},
                              'description': {'description': 'Provides a user friendly description of the '
                                                             'namespace.',
                                              'maxLength': 500,
                                              'type': 'string'},
                              'display_name': {'description': 'The user friendly name for the namespace. '
                                                              'Used by UI if available.',
                                               'maxLength': 80,
                                               'type': 'string'},
                              'namespace': {'description': 'The unique namespace text.',
                                            'maxLength': 80,
                                            'type': 'string'},
                              'objects': {'items': {'properties': {'description': {'type': 'string'},
                                                                   'name': {'type': 'string'},
                                                                   'properties': {'$ref': '#/definitions/property'},
                                                                   'required': {'$ref': '#/definitions/stringArray'}},
                                                    'type': 'object'},
                                          'type': 'array'},
                              'owner': {'description': 'Owner of the namespace.',
                                        'maxLength': 255,
                                        'type': 'string'},
                              'properties': {'$ref': '#/definitions/property'},
                              'protected': {'description': 'If true, namespace will not be deletable.',
                                            'type': 'boolean'},
                              'resource_type_associations': {'items': {'properties': {'name': {'type': 'string'},
                                                                                      'prefix': {'type': 'string'},
                                                                                      'properties_target': {'type': 'string'}},
                                                                       'type': 'object'},
                                                             'type': 'array'},
                              'schema': {'readOnly': True, 'type': 'string'},
                              'self': {'readOnly': True, 'type': 'string'},
                              'tags': {'items': {'properties': {'name': {'type': 'string'}},
                                                 'type': 'object'},
                                       'type': 'array'},
                              'updated_at': {'description': 'Date and time of the last namespace '
                                                            'modification',
                                             'format': 'date-time',
                                             'readOnly': True,
                                             'type': 'string'},
                              'visibility': {'description': 'Scope of namespace accessibility.',
                                             'enum': ['public', 'private'],
                                             'type': 'string'}},
               'required': ['namespace']},
 'namespaces': {'definitions': {'positiveInteger': {'minimum': 0, 'type': 'integer'},
                                'positiveIntegerDefault0': {'allOf': [{'$ref': '#/definitions/positiveInteger'},
                                                                      {'default': 0}]},
                                'property': {'additionalProperties': {'properties': {'additionalItems': {'type': 'boolean'},
                                                                                     'default': {},
                                                                                     'description': {'type': 'string'},
                                                                                     'enum': {'type': 'array'},
                                                                                     'items': {'properties': {'enum': {'type': 'array'},
                                                                                                              'type': {'enum': ['array',
                                                                                                                                'boolean',
                                                                                                                                'integer',
                                                                                                                                'number',
                                                                                                                                'object',
                                                                                                                                'string',
                                                                                                                                None],
                                                                                                                       'type': 'string'}},
                                                                                               'type': 'object'},
                                                                                     'maxItems': {'$ref': '#/definitions/positiveInteger'},
                                                                                     'maxLength': {'$ref': '#/definitions/positiveInteger'},
                                                                                     'maximum': {'type': 'number'},
                                                                                     'minItems': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                     'minLength': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                     'minimum': {'type': 'number'},
                                                                                     'name': {'maxLength': 80,
                                                                                              'type': 'string'},
                                                                                     'operators': {'items': {'type': 'string'},
                                                                                                   'type': 'array'},
                                                                                     'pattern': {'format': 'regex',
                                                                                                 'type': 'string'},
                                                                                     'readonly': {'type': 'boolean'},
                                                                                     'required': {'$ref': '#/definitions/stringArray'},
                                                                                     'title': {'type': 'string'},
                                                                                     'type': {'enum': ['array',
                                                                                                       'boolean',
                                                                                                       'integer',
                                                                                                       'number',
                                                                                                       'object',
                                                                                                       'string',
                                                                                                       None],
                                                                                              'type': 'string'},
                                                                                     'uniqueItems': {'default': False,
                                                                                                     'type': 'boolean'}},
                                                                      'required': ['title', 'type'],
                                                                      'type': 'object'},
                                             'type': 'object'},
                                'stringArray': {'items': {'type': 'string'},
                                                'type': 'array',
                                                'uniqueItems': True}},
                'links': [{'href': '{first}', 'rel': 'first'},
                          {'href': '{next}', 'rel': 'next'},
                          {'href': '{schema}', 'rel': 'describedby'}],
                'name': 'namespaces',
                'properties': {'first': {'type': 'string'},
                               'namespaces': {'items': {'additionalProperties': False,
                                                        'name': 'namespace',
                                                        'properties': {'created_at': {'description': 'Date '
                                                                                                     'and '
                                                                                                     'time '
                                                                                                     'of '
                                                                                                     'namespace '
                                                                                                     'creation',
                                                                                      'format': 'date-time',
                                                                                      'readOnly': True,
                                                                                      'type': 'string'},
                                                                       'description': {'description': 'Provides '
                                                                                                      'a '
                                                                                                      'user '
                                                                                                      'friendly '
                                                                                                      'description '
                                                                                                      'of '
                                                                                                      'the '
                                                                                                      'namespace.',
                                                                                       'maxLength': 500,
                                                                                       'type': 'string'},
                                                                       'display_name': {'description': 'The '
                                                                                                       'user '
                                                                                                       'friendly '
                                                                                                       'name '
                                                                                                       'for '
                                                                                                       'the '
                                                                                                       'namespace. '
                                                                                                       'Used '
                                                                                                       'by '
                                                                                                       'UI '
                                                                                                       'if '
                                                                                                       'available.',
                                                                                        'maxLength': 80,
                                                                                        'type': 'string'},
                                                                       'namespace': {'description': 'The '
                                                                                                    'unique '
                                                                                                    'namespace '
                                                                                                    'text.',
                                                                                     'maxLength': 80,
                                                                                     'type': 'string'},
                                                                       'objects': {'items': {'properties': {'description': {'type': 'string'},
                                                                                                            'name': {'type': 'string'},
                                                                                                            'properties': {'$ref': '#/definitions/property'},
                                                                                                            'required': {'$ref': '#/definitions/stringArray'}},
                                                                                             'type': 'object'},
                                                                                   'type': 'array'},
                                                                       'owner': {'description': 'Owner of '
                                                                                                'the '
                                                                                                'namespace.',
                                                                                 'maxLength': 255,
                                                                                 'type': 'string'},
                                                                       'properties': {'$ref': '#/definitions/property'},
                                                                       'protected': {'description': 'If '
                                                                                                    'true, '
                                                                                                    'namespace '
                                                                                                    'will '
                                                                                                    'not be '
                                                                                                    'deletable.',
                                                                                     'type': 'boolean'},
                                                                       'resource_type_associations': {'items': {'properties': {'name': {'type': 'string'},
                                                                                                                               'prefix': {'type': 'string'},
                                                                                                                               'properties_target': {'type': 'string'}},
                                                                                                                'type': 'object'},
                                                                                                      'type': 'array'},
                                                                       'schema': {'readOnly': True,
                                                                                  'type': 'string'},
                                                                       'self': {'readOnly': True,
                                                                                'type': 'string'},
                                                                       'tags': {'items': {'properties': {'name': {'type': 'string'}},
                                                                                          'type': 'object'},
                                                                                'type': 'array'},
                                                                       'updated_at': {'description': 'Date '
                                                                                                     'and '
                                                                                                     'time '
                                                                                                     'of the '
                                                                                                     'last '
                                                                                                     'namespace '
                                                                                                     'modification',
                                                                                      'format': 'date-time',
                                                                                      'readOnly': True,
                                                                                      'type': 'string'},
                                                                       'visibility': {'description': 'Scope '
                                                                                                     'of '
                                                                                                     'namespace '
                                                                                                     'accessibility.',
                                                                                      'enum': ['public',
                                                                                               'private'],
                                                                                      'type': 'string'}},
                                                        'required': ['namespace']},
                                              'type': 'array'},
                               'next': {'type': 'string'},
                               'schema': {'type': 'string'}}},
 'object': {'additionalProperties': False,
            'definitions': {'positiveInteger': {'minimum': 0, 'type': 'integer'},
                            'positiveIntegerDefault0': {'allOf': [{'$ref': '#/definitions/positiveInteger'},
                                                                  {'default': 0}]},
                            'property': {'additionalProperties': {'properties': {'additionalItems': {'type': 'boolean'},
                                                                                 'default': {},
                                                                                 'description': {'type': 'string'},
                                                                                 'enum': {'type': 'array'},
                                                                                 'items': {'properties': {'enum': {'type': 'array'},
                                                                                                          'type': {'enum': ['array',
                                                                                                                            'boolean',
                                                                                                                            'integer',
                                                                                                                            'number',
                                                                                                                            'object',
                                                                                                                            'string',
                                                                                                                            None],
                                                                                                                   'type': 'string'}},
                                                                                           'type': 'object'},
                                                                                 'maxItems': {'$ref': '#/definitions/positiveInteger'},
                                                                                 'maxLength': {'$ref': '#/definitions/positiveInteger'},
                                                                                 'maximum': {'type': 'number'},
                                                                                 'minItems': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                 'minLength': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                 'minimum': {'type': 'number'},
                                                                                 'name': {'maxLength': 80,
                                                                                          'type': 'string'},
                                                                                 'operators': {'items': {'type': 'string'},
                                                                                               'type': 'array'},
                                                                                 'pattern': {'format': 'regex',
                                                                                             'type': 'string'},
                                                                                 'readonly': {'type': 'boolean'},
                                                                                 'required': {'$ref': '#/definitions/stringArray'},
                                                                                 'title': {'type': 'string'},
                                                                                 'type': {'enum': ['array',
                                                                                                   'boolean',
                                                                                                   'integer',
                                                                                                   'number',
                                                                                                   'object',
                                                                                                   'string',
                                                                                                   None],
                                                                                          'type': 'string'},
                                                                                 'uniqueItems': {'default': False,
                                                                                                 'type': 'boolean'}},
                                                                  'required': ['title', 'type'],
                                                                  'type': 'object'},
                                         'type': 'object'},
                            'stringArray': {'items': {'type': 'string'},
                                            'type': 'array',
                                            'uniqueItems': True}},
            'name': 'object',
            'properties': {'created_at': {'description': 'Date and time of object creation',
                                          'format': 'date-time',
                                          'readOnly': True,
                                          'type': 'string'},
                           'description': {'type': 'string'},
                           'name': {'maxLength': 80, 'type': 'string'},
                           'properties': {'$ref': '#/definitions/property'},
                           'required': {'$ref': '#/definitions/stringArray'},
                           'schema': {'readOnly': True, 'type': 'string'},
                           'self': {'readOnly': True, 'type': 'string'},
                           'updated_at': {'description': 'Date and time of the last object modification',
                                          'format': 'date-time',
                                          'readOnly': True,
                                          'type': 'string'}},
            'required': ['name']},
 'objects': {'definitions': {'positiveInteger': {'minimum': 0, 'type': 'integer'},
                             'positiveIntegerDefault0': {'allOf': [{'$ref': '#/definitions/positiveInteger'},
                                                                   {'default': 0}]},
                             'property': {'additionalProperties': {'properties': {'additionalItems': {'type': 'boolean'},
                                                                                  'default': {},
                                                                                  'description': {'type': 'string'},
                                                                                  'enum': {'type': 'array'},
                                                                                  'items': {'properties': {'enum': {'type': 'array'},
                                                                                                           'type': {'enum': ['array',
                                                                                                                             'boolean',
                                                                                                                             'integer',
                                                                                                                             'number',
                                                                                                                             'object',
                                                                                                                             'string',
                                                                                                                             None],
                                                                                                                    'type': 'string'}},
                                                                                            'type': 'object'},
                                                                                  'maxItems': {'$ref': '#/definitions/positiveInteger'},
                                                                                  'maxLength': {'$ref': '#/definitions/positiveInteger'},
                                                                                  'maximum': {'type': 'number'},
                                                                                  'minItems': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                  'minLength': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                  'minimum': {'type': 'number'},
                                                                                  'name': {'maxLength': 80,
                                                                                           'type': 'string'},
                                                                                  'operators': {'items': {'type': 'string'},
                                                                                                'type': 'array'},
                                                                                  'pattern': {'format': 'regex',
                                                                                              'type': 'string'},
                                                                                  'readonly': {'type': 'boolean'},
                                                                                  'required': {'$ref': '#/definitions/stringArray'},
                                                                                  'title': {'type': 'string'},
                                                                                  'type': {'enum': ['array',
                                                                                                    'boolean',
                                                                                                    'integer',
                                                                                                    'number',
                                                                                                    'object',
                                                                                                    'string',
                                                                                                    None],
                                                                                           'type': 'string'},
                                                                                  'uniqueItems': {'default': False,
                                                                                                  'type': 'boolean'}},
                                                                   'required': ['title', 'type'],
                                                                   'type': 'object'},
                                          'type': 'object'},
                             'stringArray': {'items': {'type': 'string'},
                                             'type': 'array',
                                             'uniqueItems': True}},
             'links': [{'href': '{first}', 'rel': 'first'},
                       {'href': '{next}', 'rel': 'next'},
                       {'href': '{schema}', 'rel': 'describedby'}],
             'name': 'objects',
             'properties': {'first': {'type': 'string'},
                            'next': {'type': 'string'},
                            'objects': {'items': {'additionalProperties': False,
                                                  'name': 'object',
                                                  'properties': {'created_at': {'description': 'Date and '
                                                                                               'time of '
                                                                                               'object '
                                                                                               'creation',
                                                                                'format': 'date-time',
                                                                                'readOnly': True,
                                                                                'type': 'string'},
                                                                 'description': {'type': 'string'},
                                                                 'name': {'maxLength': 80, 'type': 'string'},
                                                                 'properties': {'$ref': '#/definitions/property'},
                                                                 'required': {'$ref': '#/definitions/stringArray'},
                                                                 'schema': {'readOnly': True,
                                                                            'type': 'string'},
                                                                 'self': {'readOnly': True, 'type': 'string'},
                                                                 'updated_at': {'description': 'Date and '
                                                                                               'time of the '
                                                                                               'last object '
                                                                                               'modification',
                                                                                'format': 'date-time',
                                                                                'readOnly': True,
                                                                                'type': 'string'}},
                                                  'required': ['name']},
                                        'type': 'array'},
                            'schema': {'type': 'string'}}},
 'properties': {'definitions': {'positiveInteger': {'minimum': 0, 'type': 'integer'},
                                'positiveIntegerDefault0': {'allOf': [{'$ref': '#/definitions/positiveInteger'},
                                                                      {'default': 0}]},
                                'stringArray': {'items': {'type': 'string'},
                                                'minItems': 1,
                                                'type': 'array',
                                                'uniqueItems': True}},
                'links': [{'href': '{first}', 'rel': 'first'},
                          {'href': '{next}', 'rel': 'next'},
                          {'href': '{schema}', 'rel': 'describedby'}],
                'name': 'properties',
                'properties': {'first': {'type': 'string'},
                               'next': {'type': 'string'},
                               'properties': {'additionalProperties': {'additionalProperties': False,
                                                                       'name': 'property',
                                                                       'properties': {'additionalItems': {'type': 'boolean'},
                                                                                      'default': {},
                                                                                      'description': {'type': 'string'},
                                                                                      'enum': {'type': 'array'},
                                                                                      'items': {'properties': {'enum': {'type': 'array'},
                                                                                                               'type': {'enum': ['array',
                                                                                                                                 'boolean',
                                                                                                                                 'integer',
                                                                                                                                 'number',
                                                                                                                                 'object',
                                                                                                                                 'string',
                                                                                                                                 None],
                                                                                                                        'type': 'string'}},
                                                                                                'type': 'object'},
                                                                                      'maxItems': {'$ref': '#/definitions/positiveInteger'},
                                                                                      'maxLength': {'$ref': '#/definitions/positiveInteger'},
                                                                                      'maximum': {'type': 'number'},
                                                                                      'minItems': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                      'minLength': {'$ref': '#/definitions/positiveIntegerDefault0'},
                                                                                      'minimum': {'type': 'number'},
                                                                                      'name': {'maxLength': 80,
                                                                                               'type': 'string'},
                                                                                      'operators': {'items': {'type': 'string'},
                                                                                                    'type': 'array'},
                                                                                      'pattern': {'format': 'regex',
                                                                                                  'type': 'string'},
                                                                                      'readonly': {'type': 'boolean'},
                                                                                      'required': {'$ref': '#/definitions/stringArray'},
                                                                                      'title': {'type': 'string'},
                                                                                      'type': {'enum': ['array',
                                                                                                        'boolean',
                                                                                                        'integer',
                                                                                                        'number',
                                                                                                        'object',
                                                                                                        'string',
                                                                                                        None],
                                                                                               'type': 'string'},
                                                                                      'uniqueItems': {'default': False,
                                                                                                      'type': 'boolean'}},
                                                                       'required': ['type', 'title']},
                                              'type': 'object'},
                               'schema': {'type': 'string'}}},
 'property': {'additionalProperties': False,
              'definitions': {'positiveInteger': {'minimum': 0, 'type': 'integer'},
                              'positiveIntegerDefault0': {'allOf': [{'$ref': '#/definitions/positiveInteger'},
                                                                    {'default': 0}]},
                              'stringArray': {'items': {'type': 'string'},
                                              'minItems': 1,
                                              'type': 'array',
                                              'uniqueItems': True}},
              'name': 'property',
              'properties': {'additionalItems': {'type': 'boolean'},
                             'default': {},
                             'description': {'type': 'string'},
                             'enum': {'type': 'array'},
                             'items': {'properties': {'enum': {'type': 'array'},
                                                      'type': {'enum': ['array',
                                                                        'boolean',
                                                                        'integer',
                                                                        'number',
                                                                        'object',
                                                                        'string',
                                                                        None],
                                                               'type': 'string'}},
                                       'type': 'object'},
                             'maxItems': {'$ref': '#/definitions/positiveInteger'},
                             'maxLength': {'$ref': '#/definitions/positiveInteger'},
                             'maximum': {'type': 'number'},
                             'minItems': {'$ref': '#/definitions/positiveIntegerDefault0'},
                             'minLength': {'$ref': '#/definitions/positiveIntegerDefault0'},
                             'minimum': {'type': 'number'},
                             'name': {'maxLength': 80, 'type': 'string'},
                             'operators': {'items': {'type': 'string'}, 'type': 'array'},
                             'pattern': {'format': 'regex', 'type': 'string'},
                             'readonly': {'type': 'boolean'},
                             'required': {'$ref': '#/definitions/stringArray'},
                             'title': {'type': 'string'},
                             'type': {'enum': ['array',
                                               'boolean',
                                               'integer',
                                               'number',
                                               'object',
                                               'string',
                                               None],
                                      'type': 'string'},
                             'uniqueItems': {'default': False, 'type': 'boolean'}},
              'required': ['type', 'title', 'name']},
 'resource_type': {'additionalProperties': False,
                   'name': 'resource_type_association',
                   'properties': {'created_at': {'description': 'Date and time of resource type association',
                                                 'format': 'date-time',
                                                 'readOnly': True,
                                                 'type': 'string'},
                                  'name': {'description': 'Resource type names should be aligned with Heat '
                                                          'resource types whenever possible: '
                                                          'https://docs.openstack.org/heat/latest/template_guide/openstack.html',
                                           'maxLength': 80,
                                           'type': 'string'},
                                  'prefix': {'description': 'Specifies the prefix to use for the given '
                                                            'resource type. Any properties in the namespace '
                                                            'should be prefixed with this prefix when being '
                                                            'applied to the specified resource type. Must '
                                                            'include prefix separator (e.g. a colon :).',
                                             'maxLength': 80,
                                             'type': 'string'},
                                  'properties_target': {'description': 'Some resource types allow more than '
                                                                       'one key / value pair per instance.  '
                                                                       'For example, Cinder allows user and '
                                                                       'image metadata on volumes. Only the '
                                                                       'image properties metadata is '
                                                                       'evaluated by Nova (scheduling or '
                                                                       'drivers). This property allows a '
                                                                       'namespace target to remove the '
                                                                       'ambiguity.',
                                                        'maxLength': 80,
                                                        'type': 'string'},
                                  'updated_at': {'description': 'Date and time of the last resource type '
                                                                'association modification',
                                                 'format': 'date-time',
                                                 'readOnly': True,
                                                 'type': 'string'}},
                   'required': ['name']},
 'resource_types': {'links': [{'href': '{first}', 'rel': 'first'},
                              {'href': '{next}', 'rel': 'next'},
                              {'href': '{schema}', 'rel': 'describedby'}],
                    'name': 'resource_type_associations',
                    'properties': {'first': {'type': 'string'},
                                   'next': {'type': 'string'},
                                   'resource_type_associations': {'items': {'additionalProperties': False,
                                                                            'name': 'resource_type_association',
                                                                            'properties': {'created_at': {'description': 'Date '
                                                                                                                         'and '
                                                                                                                         'time '
                                                                                                                         'of '
                                                                                                                         'resource '
                                                                                                                         'type '
                                                                                                                         'association',
                                                                                                          'format': 'date-time',
                                                                                                          'readOnly': True,
                                                                                                          'type': 'string'},
                                                                                           'name': {'description': 'Resource '
                                                                                                                   'type '
                                                                                                                   'names '
                                                                                                                   'should '
                                                                                                                   'be '
                                                                                                                   'aligned '
                                                                                                                   'with '
                                                                                                                   'Heat '
                                                                                                                   'resource '
                                                                                                                   'types '
                                                                                                                   'whenever '
                                                                                                                   'possible: '
                                                                                                                   'https://docs.openstack.org/heat/latest/template_guide/openstack.html',
                                                                                                    'maxLength': 80,
                                                                                                    'type': 'string'},
                                                                                           'prefix': {'description': 'Specifies '
                                                                                                                     'the '
                                                                                                                     'prefix '
                                                                                                                     'to '
                                                                                                                     'use '
                                                                                                                     'for '
                                                                                                                     'the '
                                                                                                                     'given '
                                                                                                                     'resource '
                                                                                                                     'type. '
                                                                                                                     'Any '
                                                                                                                     'properties '
                                                                                                                     'in '
                                                                                                                     'the '
                                                                                                                     'namespace '
                                                                                                                     'should '
                                                                                                                     'be '
                                                                                                                     'prefixed '
                                                                                                                     'with '
                                                                                                                     'this '
                                                                                                                     'prefix '
                                                                                                                     'when '
                                                                                                                     'being '
                                                                                                                     'applied '
                                                                                                                     'to '
                                                                                                                     'the '
                                                                                                                     'specified '
                                                                                                                     'resource '
                                                                                                                     'type. '
                                                                                                                     'Must '
                                                                                                                     'include '
                                                                                                                     'prefix '
                                                                                                                     'separator '
                                                                                                                     '(e.g. '
                                                                                                                     'a '
                                                                                                                     'colon '
                                                                                                                     ':).',
                                                                                                      'maxLength': 80,
                                                                                                      'type': 'string'},
                                                                                           'properties_target': {'description': 'Some '
                                                                                                                                'resource '
                                                                                                                                'types '
                                                                                                                                'allow '
                                                                                                                                'more '
                                                                                                                                'than '
                                                                                                                                'one '
                                                                                                                                'key '
                                                                                                                                '/ '
                                                                                                                                'value '
                                                                                                                                'pair '
                                                                                                                                'per '
                                                                                                                                'instance.  '
                                                                                                                                'For '
                                                                                                                                'example, '
                                                                                                                                'Cinder '
                                                                                                                                'allows '
                                                                                                                                'user '
                                                                                                                                'and '
                                                                                                                                'image '
                                                                                                                                'metadata '
                                                                                                                                'on '
                                                                                                                                'volumes. '
                                                                                                                                'Only '
                                                                                                                                'the '
                                                                                                                                'image '
                                                                                                                                'properties '
                                                                                                                                'metadata '
                                                                                                                                'is '
                                                                                                                                'evaluated '
                                                                                                                                'by '
                                                                                                                                'Nova '
                                                                                                                                '(scheduling '
                                                                                                                                'or '
                                                                                                                                'drivers). '
                                                                                                                                'This '
                                                                                                                                'property '
                                                                                                                                'allows '
                                                                                                                                'a '
                                                                                                                                'namespace '
                                                                                                                                'target '
                                                                                                                                'to '
                                                                                                                                'remove '
                                                                                                                                'the '
                                                                                                                                'ambiguity.',
                                                                                                                 'maxLength': 80,
                                                                                                                 'type': 'string'},
                                                                                           'updated_at': {'description': 'Date '
                                                                                                                         'and '
                                                                                                                         'time '
                                                                                                                         'of '
                                                                                                                         'the '
                                                                                                                         'last '
                                                                                                                         'resource '
                                                                                                                         'type '
                                                                                                                         'association '
                                                                                                                         'modification',
                                                                                                          'format': 'date-time',
                                                                                                          'readOnly': True,
                                                                                                          'type': 'string'}},
                                                                            'required': ['name']},
                                                                  'type': 'array'},
                                   'schema': {'type': 'string'}}},
 'tag': {'additionalProperties': False,
         'name': 'tag',
         'properties': {'created_at': {'description': 'Date and time of tag creation',
                                       'format': 'date-time',
                                       'readOnly': True,
                                       'type': 'string'},
                        'name': {'maxLength': 80, 'type': 'string'},
                        'updated_at': {'description': 'Date and time of the last tag modification',
                                       'format': 'date-time',
                                       'readOnly': True,
                                       'type': 'string'}},
         'required': ['name']},
 'tags': {'links': [{'href': '{first}', 'rel': 'first'},
                    {'href': '{next}', 'rel': 'next'},
                    {'href': '{schema}', 'rel': 'describedby'}],
          'name': 'tags',
          'properties': {'first': {'type': 'string'},
                         'next': {'type': 'string'},
                         'schema': {'type': 'string'},
                         'tags': {'items': {'additionalProperties': False,
                                            'name': 'tag',
                                            'properties': {'created_at': {'description': 'Date and time of '
                                                                                         'tag creation',
                                                                          'format': 'date-time',
                                                                          'readOnly': True,
                                                                          'type': 'string'},
                                                           'name': {'maxLength': 80, 'type': 'string'},
                                                           'updated_at': {'description': 'Date and time of '
                                                                                         'the last tag '
                                                                                         'modification',
                                                                          'format': 'date-time',
                                                                          'readOnly': True,
                                                                          'type': 'string'}},
                                            'required': ['name']},
                                  'type': 'array'}}},
 'task': {'name': 'task',
          'properties': {'created_at': {'description': 'Datetime when this resource was created',
                                        'type': 'string'},
                         'expires_at': {'description': 'Datetime when this resource would be subject to '
                                                       'removal',
                                        'type': ['null', 'string']},
                         'id': {'description': 'An identifier for the task',
                                'pattern': '^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$',
                                'type': 'string'},
                         'image_id': {'description': 'Image associated with the task', 'type': 'string'},
                         'input': {'description': 'The parameters required by task, JSON blob',
                                   'type': ['null', 'object']},
                         'message': {'description': 'Human-readable informative message only included when '
                                                    'appropriate (usually on failure)',
                                     'type': 'string'},
                         'owner': {'description': 'An identifier for the owner of this task',
                                   'type': 'string'},
                         'request_id': {'description': 'Human-readable informative request-id',
                                        'type': 'string'},
                         'result': {'description': 'The result of current task, JSON blob',
                                    'type': ['null', 'object']},
                         'schema': {'readOnly': True, 'type': 'string'},
                         'self': {'readOnly': True, 'type': 'string'},
                         'status': {'description': 'The current status of this task',
                                    'enum': ['pending', 'processing', 'success', 'failure'],
                                    'type': 'string'},
                         'type': {'description': 'The type of task represented by this content',
                                  'enum': ['import', 'api_image_import', 'location_import'],
                                  'type': 'string'},
                         'updated_at': {'description': 'Datetime when this resource was updated',
                                        'type': 'string'},
                         'user_id': {'description': 'User associated with the task', 'type': 'string'}}},
 'tasks': {'links': [{'href': '{schema}', 'rel': 'describedby'}],
           'name': 'tasks',
           'properties': {'schema': {'type': 'string'},
                          'tasks': {'items': {'name': 'task',
                                              'properties': {'created_at': {'description': 'Datetime when '
                                                                                           'this resource '
                                                                                           'was created',
                                                                            'type': 'string'},
                                                             'expires_at': {'description': 'Datetime when '
                                                                                           'this resource '
                                                                                           'would be subject '
                                                                                           'to removal',
                                                                            'type': ['null', 'string']},
                                                             'id': {'description': 'An identifier for the '
                                                                                   'task',
                                                                    'pattern': '^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$',
                                                                    'type': 'string'},
                                                             'image_id': {'description': 'Image associated '
                                                                                         'with the task',
                                                                          'type': 'string'},
                                                             'owner': {'description': 'An identifier for the '
                                                                                      'owner of this task',
                                                                       'type': 'string'},
                                                             'request_id': {'description': 'Human-readable '
                                                                                           'informative '
                                                                                           'request-id',
                                                                            'type': 'string'},
                                                             'schema': {'readOnly': True, 'type': 'string'},
                                                             'self': {'readOnly': True, 'type': 'string'},
                                                             'status': {'description': 'The current status '
                                                                                       'of this task',
                                                                        'enum': ['pending',
                                                                                 'processing',
                                                                                 'success',
                                                                                 'failure'],
                                                                        'type': 'string'},
                                                             'type': {'description': 'The type of task '
                                                                                     'represented by this '
                                                                                     'content',
                                                                      'enum': ['import',
                                                                               'api_image_import',
                                                                               'location_import'],
                                                                      'type': 'string'},
                                                             'updated_at': {'description': 'Datetime when '
                                                                                           'this resource '
                                                                                           'was updated',
                                                                            'type': 'string'},
                                                             'user_id': {'description': 'User associated '
                                                                                        'with the task',
                                                                         'type': 'string'}}},
                                    'type': 'array'}}}}
