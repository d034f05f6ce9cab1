"""Scripts of the lung nodule CT bundle: synthetic chest CT, LIDC-IDRI conversion, nodule tables, the demo."""
