"""The command line: assembles ``hangar`` from the registry's, the client's and the runtime's parts."""
