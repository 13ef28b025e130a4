"""Freezeframe's python-openstackclient plugin: ``openstack server snapshot``, ``openstack
baremetal node snapshot`` and ``openstack workflow list|show|watch|cancel``, installed with the
package (the ``openstack.cli.extension`` entry point names ``freezeframe.osc.plugin``; the
commands are in the ``openstack.freezeframe.v1`` group).

They call the APIs through openstackclient's keystoneauth session, with the endpoints of the
cloud it logged in to (the catalog, or ``<type>_endpoint_override`` keys): ``client.py``.
"""
