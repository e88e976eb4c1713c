"""The staff console at ``/console``: server-rendered pages (Jinja, htmx served by Keel) over the
same services the ``/v1/admin/…`` routes use."""
