/* A well-formed shared library that is not a flatsync plugin: no flatsync_plugin_entry. */
int unrelated_function(int x) { return x + 1; }
