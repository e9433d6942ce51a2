"""Base layer, core: catalogs and loaders, the demo catalog, storage, configs, the dialog loop, the feedback reader."""
