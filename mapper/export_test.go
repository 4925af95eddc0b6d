package mapper

// DeletedObject is deletedObject, for tests.
var DeletedObject = deletedObject
