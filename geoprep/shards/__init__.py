"""The on-disk contract shared by build, reader and inspect: schema, writer, layout, listing."""
